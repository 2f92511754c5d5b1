"""The one supervisor of `agentq up` and `agentq dashboard`, on real child processes."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from bench.stack import wait_until
from services.common.supervisor import Child, Program, restart_delay, shutdown, supervise
from services.dashboard.serve import programs
from services.up import ChildSpec, program


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


@pytest.mark.parametrize(("restarts", "delay"), [(1, 2.0), (2, 4.0), (3, 6.0), (100, 30.0)])
def test_restarts_wait_longer_each_time_up_to_a_ceiling(restarts: int, delay: float) -> None:
    assert restart_delay(2.0, restarts) == delay


def test_a_child_that_dies_is_started_again(tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    code = f"open({str(starts)!r}, 'a').write('x')"  # counts its starts, then exits 3
    child = Child(Program("flaky", _python(code + "; raise SystemExit(3)"), restart_s=0.0))
    stop = threading.Event()
    said: list[str] = []
    runner = threading.Thread(target=supervise, args=([child], stop, said.append))
    runner.start()
    try:
        wait_until(lambda: starts.exists() and len(starts.read_text()) >= 3, 30,
                   "three starts")
    finally:
        stop.set()
        runner.join()
        shutdown([child], 5.0)
    assert child.restarts >= 2
    assert "flaky exited with 3; restarting in 0s" in said


def test_an_essential_child_exit_stops_supervision_with_its_code() -> None:
    stop = threading.Event()
    sleeper = Child(Program("sleeper", _python("import time; time.sleep(60)")))
    web = Child(Program("web", _python("raise SystemExit(7)"), essential=True))
    try:
        assert supervise([sleeper, web], stop, lambda _: None) == 7
        assert sleeper.exit_code() is None  # still running: shutdown is the caller's
    finally:
        shutdown([sleeper, web], 5.0)
    assert sleeper.exit_code() is not None


def test_shutdown_kills_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    stubborn = Child(Program("stubborn", _python(
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"open({str(ready)!r}, 'w').close(); time.sleep(60)"), prefix=False))
    stubborn.start()
    wait_until(ready.exists, 10, "the child ignoring SIGTERM")
    shutdown([stubborn], 0.5)
    assert stubborn.exit_code() == -9


def test_up_and_dashboard_describe_their_children_for_the_one_supervisor() -> None:
    worker = program(ChildSpec("worker-1", ["worker"], {"AGENTQ_METRICS_PORT": "9111"}))
    assert list(worker.argv[1:]) == ["-m", "services.cli", "worker"]
    assert worker.env == {"AGENTQ_METRICS_PORT": "9111"} and not worker.essential
    web, = [p for p in programs(["gunicorn"], ["collector"]) if p.essential]
    assert list(web.argv) == ["gunicorn"]
    assert [p.name for p in programs(["gunicorn"], None)] == ["web"]
