"""In-flight dedup: identical tasks running at once make one provider call."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
from redis.asyncio import Redis

from bench.cost_stack import CostStack, cost_stack
from services.common.cache import CachedAnswer, ExactCache, cache_key
from services.common.models import Task, Usage
from services.common.settings import Settings
from services.common.topology import Names
from services.worker.dedup import InflightLocks, wait_for_answer

ANSWER = CachedAnswer(output="42", model="gpt-4o-mini", tier="cheap", usage=Usage())


def test_locks_are_owned_renewable_and_released_only_by_their_owner(settings: Settings) -> None:
    async def scenario() -> None:
        redis = Redis.from_url(settings.redis_url)
        locks = InflightLocks(redis, ttl_s=5)
        key = Names(settings.namespace).redis_key("cache", "exact", "t", "k")
        assert await locks.acquire(key, "first")
        assert await locks.acquire(key, "first")  # a retry of the owner
        assert not await locks.acquire(key, "second")
        await locks.release(key, "second")
        assert await locks.held(key)
        await locks.release(key, "first")
        assert not await locks.held(key) and await locks.acquire(key, "second")
        await redis.aclose()

    asyncio.run(scenario())


def test_a_twin_gets_the_answer_when_it_lands_or_gives_up_when_the_owner_does(
        settings: Settings) -> None:
    async def scenario() -> None:
        redis = Redis.from_url(settings.redis_url)
        names = Names(settings.namespace)
        cache = ExactCache(redis, names, ttl_s=60)
        locks = InflightLocks(redis, ttl_s=5)
        task = Task(prompt=f"dedup {uuid.uuid4()}")
        key = cache_key(names, task, "cheap")
        await locks.acquire(key, "owner")

        async def owner_answers() -> None:
            await asyncio.sleep(0.2)
            await cache.put(task, "cheap", ANSWER)
            await locks.release(key, "owner")

        writer = asyncio.create_task(owner_answers())
        got = await wait_for_answer(lambda: cache.get(task, "cheap"), lambda: locks.held(key), 5)
        await writer
        assert got == ANSWER

        other = Task(prompt=f"dedup abandoned {uuid.uuid4()}")
        other_key = cache_key(names, other, "cheap")
        await locks.acquire(other_key, "owner")
        asyncio.get_running_loop().call_later(0.2, lambda: asyncio.ensure_future(
            locks.release(other_key, "owner")))
        assert await wait_for_answer(lambda: cache.get(other, "cheap"),
                                     lambda: locks.held(other_key), 5) is None
        await redis.aclose()

    asyncio.run(scenario())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CostStack]:
    with cost_stack(tmp_path_factory.mktemp("dedup"), workers=2) as running:
        yield running


def test_identical_concurrent_tasks_make_one_provider_call(stack: CostStack) -> None:
    stack.control(latency_ms=600)  # the first call is still running when its twins arrive
    try:
        before = stack.stats()["requests"]
        prompt = f"Classify this: where is my parcel? {uuid.uuid4()} labels: late, lost"
        results = stack.run([{"kind": "classify", "prompt": prompt} for _ in range(12)])
    finally:
        stack.control(latency_ms=0)
    assert stack.stats()["requests"] - before == 1
    assert {r["status"] for r in results} == {"succeeded"}
    assert len({r["output"] for r in results}) == 1
    paid = [r for r in results if r["cache"] == "miss"]
    assert len(paid) == 1 and paid[0]["cost_usd"] > 0
    twins = [r for r in results if r["cache"] == "exact"]
    assert len(twins) == 11 and all(r["cost_usd"] == 0 for r in twins)
    assert all(r["cached_from"] == paid[0]["task_id"] for r in twins)
    assert any("dedup" in r["route_reason"] for r in twins)
