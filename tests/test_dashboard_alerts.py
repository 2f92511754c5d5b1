"""The alert state machine (pure): fire after the duration, hold, resolve with hysteresis,
and no flapping on a value that wanders around its threshold."""

from __future__ import annotations

import pytest

from services.dashboard.alerts import (
    OK,
    Reading,
    Status,
    broker_silence_s,
    cost_threshold,
    evaluate,
    growth_per_min,
    message,
    step,
    wrong_hit_pct,
)
from services.dashboard.thresholds import DEFAULTS, RuleConfig

THRESHOLD = 100.0
HYSTERESIS = 0.1  # resolves at or below 90
STEP_S = 10.0


def run(values: list[float | None], for_s: float = 30.0, enabled: bool = True,
        start: Status = OK) -> list[str]:
    """Step one rule through `values`, one every 10 s; return the states seen."""
    config = RuleConfig(threshold=THRESHOLD, for_s=for_s, enabled=enabled)
    status, seen = start, []
    for i, value in enumerate(values):
        status = step(status, Reading(value, THRESHOLD), config, HYSTERESIS, i * STEP_S)
        seen.append(status.state)
    return seen


FIRING = Status("firing", -100.0, 150.0)


@pytest.mark.parametrize("name, values, for_s, start, expected", [
    ("fires once the duration has passed", [150, 150, 150, 150, 150], 30, OK,
     ["pending", "pending", "pending", "firing", "firing"]),
    ("a dip restarts the clock", [150, 150, 50, 150, 150, 150], 30, OK,
     ["pending", "pending", "ok", "pending", "pending", "pending"]),
    ("at the threshold is not above it", [100, 100, 100, 100], 0, OK,
     ["ok", "ok", "ok", "ok"]),
    ("zero duration fires at once", [150, 150], 0, OK, ["firing", "firing"]),
    ("holds above the resolve level", [95, 99, 91, 120], 30, FIRING,
     ["firing", "firing", "firing", "firing"]),
    ("resolves only below threshold × (1 − hysteresis), for the duration",
     [80, 80, 80, 80, 80], 30, FIRING, ["resolving", "resolving", "resolving", "ok", "ok"]),
    ("a relapse while resolving is still firing", [80, 80, 120, 80], 30, FIRING,
     ["resolving", "resolving", "firing", "resolving"]),
    ("zero duration resolves at once", [90], 0, FIRING, ["ok"]),
    ("an unknown value holds the state", [None, None], 30, FIRING, ["firing", "firing"]),
])
def test_state_machine(name: str, values: list[float | None], for_s: float, start: Status,
                       expected: list[str]) -> None:
    assert run(values, for_s, start=start) == expected, name


@pytest.mark.parametrize("low, high", [(95, 105), (91, 140), (99.9, 100.1)])
def test_no_flapping_around_the_threshold(low: float, high: float) -> None:
    wobble = [high, low] * 30
    before = run(wobble, for_s=30)
    assert "firing" not in before  # each dip restarts the pending clock
    after = run(wobble, for_s=30, start=FIRING)
    assert set(after) == {"firing"}  # never low enough to start resolving


def test_disabling_a_firing_rule_ends_it() -> None:
    assert run([150], enabled=False, start=FIRING) == ["ok"]
    assert run([150], enabled=False) == ["ok"]


def test_evaluate_reports_only_changes_with_notices() -> None:
    values = {**DEFAULTS, "queue_depth": 10.0, "queue_depth_for_s": 0.0}
    readings = {"queue_depth": Reading(50, 10, "agentq.work.cheap"),
                "error_rate": Reading(0, 5)}
    statuses, changes = evaluate({}, readings, values, now=1000)
    assert statuses["queue_depth"].state == "firing" and statuses["error_rate"].state == "ok"
    assert [(c.rule, c.notice) for c in changes] == [("queue_depth", "firing")]
    text = message(changes[0], "agentq")
    assert text == "[agentq] FIRING: Queue depth 50 messages > 10 messages (agentq.work.cheap)"
    again, none = evaluate(statuses, readings, values, now=1005)
    assert none == [] and again["queue_depth"].since == 1000
    _, resolved = evaluate(again, {"queue_depth": Reading(0, 10)}, values, now=1010)
    assert [c.notice for c in resolved] == ["resolved"]


@pytest.mark.parametrize("limit, factor, baseline, expected", [
    (10, 3, 1.0, 3.0), (10, 3, 5.0, 10), (10, 0, 1.0, 10), (10, 3, None, 10), (10, 3, 0, 10)])
def test_cost_threshold_is_the_lower_of_limit_and_spike(limit: float, factor: float,
                                                        baseline: float | None,
                                                        expected: float) -> None:
    assert cost_threshold(limit, factor, baseline) == pytest.approx(expected)


def test_growth_is_a_least_squares_slope_per_minute() -> None:
    points = [(t, 100 + 2 * t) for t in range(0, 61, 5)]  # +2 per second
    assert growth_per_min([(float(t), d) for t, d in points]) == pytest.approx(120)
    assert growth_per_min([(0.0, 5), (5.0, 9)]) is None  # too short a span to judge


@pytest.mark.parametrize("last_sample, watching_since, now, expected", [
    (990.0, None, 1000.0, 10.0),  # the web app's view: the newest sample's age
    (990.0, 500.0, 1000.0, 10.0),  # sampled while watching
    (100.0, 980.0, 1000.0, 20.0),  # a restart counts from itself, not the old sample
    (None, 970.0, 1000.0, 30.0),  # broker down since the collector began: nothing sampled
    (1001.0, None, 1000.0, 0.0),  # a sample stamped a little ahead is not negative silence
    (None, None, 1000.0, None),  # nothing to go on: the rule holds its state
])
def test_broker_silence_is_the_age_of_the_last_sample(
        last_sample: float | None, watching_since: float | None, now: float,
        expected: float | None) -> None:
    assert broker_silence_s(last_sample, watching_since, now) == expected


def test_broker_unreachable_fires_while_samples_stop_and_resolves_on_the_next_one() -> None:
    values = {**DEFAULTS, "broker_unreachable": 30.0}
    statuses: dict[str, Status] = {}
    seen = []
    last = 0.0
    for now in range(0, 120, 5):  # samples every 5 s, none between 20 s and 80 s
        if not 20 <= now < 80:
            last = float(now)
        reading = Reading(broker_silence_s(last, 0.0, now), 30.0)
        statuses, changes = evaluate(statuses, {"broker_unreachable": reading}, values, now)
        seen += [(now, c.to_state) for c in changes if c.rule == "broker_unreachable"]
    assert seen == [(50, "firing"), (80, "ok")]


@pytest.mark.parametrize(("verified", "agreed", "expected"), [
    (0, 0, None),  # nothing sampled: unknown, so the rule holds its state
    (50, 50, 0.0),
    (50, 49, 2.0),
    (4, 1, 75.0),
    (3, 5, 0.0),  # counts from two bins out of step never give a negative share
])
def test_wrong_hit_share_of_sampled_semantic_hits(verified: int, agreed: int,
                                                  expected: float | None) -> None:
    assert wrong_hit_pct(verified, agreed) == expected
