"""Redis goes away mid-run: frozen (SIGSTOP, then SIGCONT), restarted with its data, and
restarted empty (a Redis without persistence). Redis holds only extras (caches, dedup
locks, spend, the limiter's shared buckets, the lane registry): no task may wait on it for
good, and tasks already waiting in tenant lanes when Redis forgot them still finish."""

from __future__ import annotations

import pytest

from tests.faults.harness import CONCURRENCY, WORKERS, FaultPipeline, Load, check, settle

SLOTS = WORKERS * CONCURRENCY


def test_redis_frozen_for_five_seconds(faulty: FaultPipeline) -> None:
    load = Load(faulty, "redis-pause", seconds=6).start()
    load.wait_accepted(0.3)
    faulty.redis.pause(5.0)
    outcome = settle(faulty, load)
    # A dedup lock may be skipped while Redis does not answer; prompts are all different, so
    # no call is saved or doubled by it.
    check(outcome, extra_calls=0)


def test_redis_restarted_with_its_data(faulty: FaultPipeline) -> None:
    load = Load(faulty, "redis-restart", seconds=5).start()
    load.wait_accepted(0.4)
    faulty.redis.restart(keep_data=True, down_s=2.0)
    outcome = settle(faulty, load)
    check(outcome, extra_calls=0)


@pytest.mark.stack(latency_ms=400)
@pytest.mark.parametrize("wipe", ["restart-empty", "flushall"])
def test_redis_loses_its_data_with_tasks_waiting_in_lanes(faulty: FaultPipeline,
                                                          wipe: str) -> None:
    # A slow provider: most tasks wait in their tenants' lanes when Redis forgets everything,
    # the lane registry with it; no later task of those tenants registers them again.
    load = Load(faulty, f"redis-data-loss-{wipe}", seconds=2).start()
    load.wait_accepted(1.0)
    done_before = faulty.stats()["completed"]
    if wipe == "flushall":
        faulty.redis.client().flushall()
    else:
        faulty.redis.restart(keep_data=False)
    outcome = settle(faulty, load, timeout=120)
    check(outcome, extra_calls=0, done_before_wipe=done_before)
