"""bench/redis_calls.py: Redis commands per task from INFO commandstats."""

from __future__ import annotations

import uuid

import redis

from bench.redis_calls import RedisCalls, calls_by_command, delta, summary
from bench.stack import REDIS_URL


def test_calls_by_command_reads_the_parsed_info() -> None:
    info = {"cmdstat_get": {"calls": 7, "usec": 10}, "cmdstat_evalsha": {"calls": 3},
            "errorstat_ERR": {"count": 1}}
    assert calls_by_command(info) == {"get": 7, "evalsha": 3}


def test_delta_keeps_what_ran_in_the_window_only() -> None:
    assert delta({"get": 5, "set": 2}, {"get": 9, "set": 2, "incr": 4}) == {"get": 4, "incr": 4}


def test_summary_is_per_task_largest_first() -> None:
    line = summary({"get": 40, "evalsha": 100, "set": 10}, tasks=10, top=2)
    assert line == "15.0 per task (evalsha 10.0, get 4.0)"
    assert summary({}, tasks=0) == "no tasks"


def test_counts_commands_on_the_real_redis() -> None:
    key = f"agentq_test_{uuid.uuid4().hex[:8]}:calls"
    client = redis.Redis.from_url(REDIS_URL)
    meter = RedisCalls(REDIS_URL)
    try:
        meter.start()
        for i in range(5):
            client.set(key, i)
        calls = meter.stop()
        # Other users of the server may add calls, never take them away.
        assert calls.get("set", 0) >= 5
    finally:
        client.delete(key)
        client.close()
