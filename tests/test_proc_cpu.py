"""bench/proc_cpu.py: /proc stat parsing, process trees and the CPU-ms-per-task table."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from bench.proc_cpu import (
    Meter,
    format_table,
    ms_per_task,
    owners,
    parse_stat,
    read_stat,
    spent,
)

# A real line's shape: pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt
# majflt cmajflt utime stime cutime cstime ...
LINE = "4242 (python3) S 17 4242 4242 0 -1 4194560 900 0 0 0 {utime} {stime} 5 6 20 0 3 0"


@pytest.mark.parametrize(("comm", "expected"), [
    ("python3", "python3"),
    ("gunicorn: worker [x]", "gunicorn: worker [x]"),  # spaces in the name
    ("odd) (name", "odd) (name"),                          # parentheses in the name
])
def test_parse_stat_reads_pid_name_parent_and_cpu_ticks(comm: str, expected: str) -> None:
    line = LINE.format(utime=120, stime=30).replace("(python3)", f"({comm})")
    stat = parse_stat(line)
    assert (stat.pid, stat.comm, stat.ppid, stat.ticks) == (4242, expected, 17, 150)


@pytest.mark.parametrize("line", ["", "garbage", "12 (x) S 1 2"])
def test_parse_stat_refuses_what_is_not_a_stat_line(line: str) -> None:
    with pytest.raises(ValueError):
        parse_stat(line)


def test_owners_give_each_pid_to_its_nearest_root_and_skip_the_rest() -> None:
    #   1 ── 10 (bench) ── 11 ── 12 (router) ── 13
    #    └── 20 (redis)       └── 14
    #    └── 30 (someone else's)
    parents = {1: 0, 10: 1, 11: 10, 12: 11, 13: 12, 14: 11, 20: 1, 30: 1}
    got = owners({"bench": [10], "router": [12], "redis": [20], "gone": [99]}, parents)
    assert got == {10: "bench", 11: "bench", 14: "bench", 12: "router", 13: "router",
                   20: "redis"}


def test_spent_counts_new_pids_from_zero_and_never_goes_negative() -> None:
    before = {1: 100, 2: 50}
    after = {1: 160, 2: 50, 3: 7}  # 3 started in the window
    assert spent(before, after) == 60 + 0 + 7
    assert spent({1: 100}, {1: 90}) == 0  # a reused pid must not subtract


def test_table_lists_largest_first_with_per_task_ms_and_total() -> None:
    lines = format_table({"router": 1.0, "worker-1": 3.0}, tasks=1000, seconds=2.0,
                         title="agentq")
    assert "1000 tasks" in lines[0]
    assert lines[1].split()[:2] == ["worker-1", "3.000"]
    assert lines[2].split()[:2] == ["router", "1.000"]
    assert lines[3].split()[:2] == ["total", "4.000"]
    assert "2.00 cores busy" in lines[3]
    assert ms_per_task(1.5, 0) == 0.0


def test_read_stat_of_this_process_and_of_a_gone_one() -> None:
    me = read_stat(os.getpid())
    assert me is not None and me.pid == os.getpid() and me.ppid == os.getppid()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert read_stat(child.pid) is None


SPIN_THEN_SLEEP = ("import time\nt = time.process_time()\n"
                   "while time.process_time() - t < 0.3: pass\ntime.sleep(60)")


def test_meter_counts_a_busy_grandchild_started_in_the_window() -> None:
    """The root only starts a child that spins: the child's CPU lands on the root's group."""
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    meter = Meter({"busy": [os.getpid()], "idle": [idle.pid]})
    meter.start()
    child = subprocess.Popen([sys.executable, "-c", SPIN_THEN_SLEEP])
    try:
        deadline = time.monotonic() + 30
        used = meter.stop()
        while used["busy"] < 0.3 and time.monotonic() < deadline:
            time.sleep(0.05)
            used = meter.stop()
        assert used["busy"] >= 0.3
        assert used["idle"] < 0.1
    finally:
        for proc in (child, idle):
            proc.kill()
            proc.wait()


def test_meter_splits_out_processes_by_command_line() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                              "collector-marker"])
    try:
        meter = Meter({"dashboard": [os.getpid()]}, split={"collector": "collector-marker"})
        meter.start()
        assert child.pid in meter.before["collector"]
        assert child.pid not in meter.before["dashboard"]
        assert os.getpid() in meter.before["dashboard"]
    finally:
        child.kill()
        child.wait()
