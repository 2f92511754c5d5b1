"""A Redis outage skips the extras (caches, dedup locks, spend counters), never a task.

Against a Redis of the test's own on another port, killed and started again (empty, as a
Redis without persistence restarts): the pieces first, then a running pipeline whose tasks
keep succeeding through the outage.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pika
import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from bench.stack import AMQP_URL, Pipeline, free_port, running_pipeline, start_redis, wait_until
from services.common.budget import SpendLedger
from services.common.redis_extras import Extras
from services.common.topology import Names
from tests.conftest import Rabbit

T = TypeVar("T")


class OwnRedis:
    """A redis-server of the test's own: `stop` kills it, `start` brings up an empty one."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.start()

    def start(self) -> None:
        self.procs.append(start_redis(self.port))

    def stop(self) -> None:
        self.procs[-1].kill()
        self.procs[-1].wait()

    def client(self) -> Redis:
        return Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1,
                              retry=Retry(NoBackoff(), 0))

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    server = OwnRedis()
    yield server
    server.close()


def _run(own: OwnRedis, scenario: Callable[[Redis], Awaitable[T]]) -> T:
    async def main() -> T:
        client = own.client()
        try:
            return await scenario(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


def _skipped(service: str, step: str) -> float:
    return REGISTRY.get_sample_value("agentq_redis_skipped_total",
                                     {"service": service, "step": step}) or 0.0


async def _fails() -> None:
    raise ValueError("not a Redis error")


def test_attempt_gives_the_fallback_while_redis_is_down(own_redis: OwnRedis) -> None:
    extras = Extras("test-attempt")

    async def scenario(client: Redis) -> list[object]:
        seen: list[object] = [await extras.attempt("cache", client.set("k", "v"), None),
                              await extras.attempt("cache", client.get("k"), "fallback")]
        own_redis.stop()
        seen.append(await extras.attempt("cache", client.get("k"), "fallback"))
        seen.append(await extras.attempt("cache", client.get("k"), "fallback"))
        own_redis.start()
        seen.append(await extras.attempt("cache", client.get("k"), "fallback"))  # empty again
        with pytest.raises(ValueError):  # only Redis errors are skipped
            await extras.attempt("cache", _fails(), None)
        return seen

    assert _run(own_redis, scenario) == [True, b"v", "fallback", "fallback", None]
    assert _skipped("test-attempt", "cache") == 2


def test_spend_ledger_keeps_what_redis_missed_and_adds_it_with_the_next_spend(
        own_redis: OwnRedis) -> None:
    names = Names(f"agentq_test_{uuid.uuid4().hex[:8]}")

    async def scenario(client: Redis) -> list[float]:
        ledger = SpendLedger(client, names)
        await ledger.add("acme", 1.0)
        spent = [(await ledger.spend("acme")).day_usd]
        own_redis.stop()
        for _ in range(2):
            with pytest.raises(RedisError):
                await ledger.add("acme", 0.5)
        own_redis.start()  # empty: the 1.0 went with the old server
        await ledger.add("acme", 0.25)
        spend = await ledger.spend("acme")
        spent += [spend.day_usd, spend.month_usd]
        await ledger.add("acme", 0.125)  # nothing left over: only the new spend
        spent.append((await ledger.spend("acme")).day_usd)
        return spent

    assert _run(own_redis, scenario) == [1.0, 1.25, 1.25, 1.375]


def test_concurrent_spend_is_each_counted_once(own_redis: OwnRedis) -> None:
    names = Names(f"agentq_test_{uuid.uuid4().hex[:8]}")

    async def scenario(client: Redis) -> float:
        ledger = SpendLedger(client, names)
        await asyncio.gather(*(ledger.add(f"t{i % 2}", 0.01) for i in range(100)))
        return (await ledger.spend("t0")).day_usd + (await ledger.spend("t1")).day_usd

    assert _run(own_redis, scenario) == pytest.approx(1.0)


_BUSY = """
local t = redis.call('TIME')
local start = tonumber(t[1]) + tonumber(t[2]) / 1000000
local now = start
while now - start < tonumber(ARGV[1]) do
  t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
return 1
"""


def test_spend_whose_reply_was_lost_is_not_counted_twice(own_redis: OwnRedis) -> None:
    names = Names(f"agentq_test_{uuid.uuid4().hex[:8]}")

    async def scenario(client: Redis) -> list[float]:
        ledger = SpendLedger(client, names)
        await ledger.add("acme", 1.0)
        admin = Redis.from_url(own_redis.url)
        # Redis is busy for 1.5 s: the add waits past the client's 1 s timeout, then runs.
        # It is applied, but its caller saw an error.
        busy = asyncio.create_task(admin.eval(_BUSY, 0, 1.5))
        await asyncio.sleep(0.1)
        with pytest.raises(RedisError):
            await ledger.add("acme", 0.5)
        await busy
        await admin.aclose()
        spent = [(await ledger.spend("acme")).day_usd]
        await ledger.add("acme", 0.25)  # sends the 0.5 again: already counted, so not twice
        spent.append((await ledger.spend("acme")).day_usd)
        return spent

    assert _run(own_redis, scenario) == [1.5, 1.75]


# --- a running pipeline ---------------------------------------------------------------------

@pytest.fixture
def outage_pipeline(tmp_path: Path, own_redis: OwnRedis) -> Iterator[Pipeline]:
    with running_pipeline(tmp_path, workers=2, rpm=600, tpm=200_000,
                          env={"AGENTQ_REDIS_URL": own_redis.url}) as running:
        try:
            yield running
        finally:
            _delete_lanes(running.ns, ["before", "during", "after"])


def _delete_lanes(ns: str, tenants: list[str]) -> None:
    """The lanes are registered in the test's own Redis, which the namespace cleanup does not
    read: delete them here."""
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        channel = connection.channel()
        for tenant in tenants:
            channel.queue_delete(f"{ns}.work.cheap.{tenant}")
    finally:
        connection.close()


def _tasks(tenant: str, label: str, n: int) -> list[dict[str, object]]:
    return [{"prompt": f"{label} {i} {uuid.uuid4()}", "tenant": tenant, "tier": "cheap"}
            for i in range(n)]


def test_tasks_keep_succeeding_through_a_redis_outage(outage_pipeline: Pipeline,
                                                      own_redis: OwnRedis) -> None:
    pipeline = outage_pipeline
    before = [pipeline.submit(task) for task in _tasks("before", "before", 5)]
    assert {b["status"] for b in pipeline.wait_done(before, 60).values()} == {"succeeded"}

    own_redis.stop()
    # A tenant whose lane is known keeps it; a new one goes to the tier's queue.
    during = [pipeline.submit(task) for task in
              _tasks("before", "during", 10) + _tasks("during", "during", 10)]
    # The same prompt twice: with Redis down neither cache nor dedup answers; both call.
    twins = [pipeline.submit({"prompt": "same question", "tenant": "before", "tier": "cheap"})
             for _ in range(2)]
    done = pipeline.wait_done(during + twins, 90)
    assert {b["status"] for b in done.values()} == {"succeeded"}
    assert {b["result"]["cache"] for b in done.values()} == {"miss"}
    workers = pipeline.stack.log("worker-1") + pipeline.stack.log("worker-2")
    assert "limiting locally" in workers  # the limiter fell back to its local buckets
    assert "skipped while it is" in workers  # and the extras were skipped, not the tasks

    own_redis.start()
    after = [pipeline.submit(task) for task in _tasks("after", "after", 5)]
    assert {b["status"] for b in pipeline.wait_done(after, 60).values()} == {"succeeded"}
    wait_until(lambda: "sharing the pools again" in (pipeline.stack.log("worker-1")
                                                     + pipeline.stack.log("worker-2")),
               30, "the limiter to share the pools again")
    rabbit = Rabbit(AMQP_URL)
    try:
        assert rabbit.count(Names(pipeline.ns).dead) == 0  # nothing was dead-lettered
    finally:
        rabbit.close()
