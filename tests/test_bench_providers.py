"""The figures `agentq bench providers` prints, judged from a provider's view of each call."""

from __future__ import annotations

from bench.providers import figures


def steady(start: float, stop: float, per_s: float) -> list[tuple[float, bool]]:
    count = int((stop - start) * per_s)
    return [(start + (i + 1) / per_s, False) for i in range(count)]


def test_a_run_that_learns_after_a_dip() -> None:
    # A burst of 60 at once, 40 s at half the 60-RPM quota with a 429 a second, then 120 s
    # at the quota.
    calls = [(0.5, False)] * 60 + steady(1, 41, 0.5) + [(1.0 + i, True) for i in range(40)]
    calls += steady(41, 161, 1.0)
    result = figures("p", 60, calls, tasks=200, failed=0)
    assert result.calls == len(calls) and result.refused == 40
    assert result.seconds == 161.0
    # Windows of 20 s need 18 completions: they hold from about 39 s on.
    assert result.converged_s is not None and 35 <= result.converged_s <= 41
    assert result.utilisation is not None and 0.95 <= result.utilisation <= 1.01
    assert result.refused_steady == 0 and result.calls_steady == 101  # (60 s, 161 s]
    assert "never" not in result.row()


def test_a_run_that_never_holds_the_quota() -> None:
    calls = steady(0, 200, 0.5)  # half the quota throughout
    result = figures("p", 60, calls, tasks=100, failed=3)
    assert result.converged_s is None and result.utilisation is None
    assert result.row().split()[-1] == "3" and "never" in result.row()


def test_the_timeline_counts_each_bucket() -> None:
    calls = [(0.5, False), (1.0, True), (12.0, False), (31.0, True)]
    assert figures("p", 60, calls, 2, 0).timeline == "0s 1/1 | 10s 1/0 | 20s 0/0 | 30s 0/1"
