"""A real `Worker` against the Broker interface: the same tests on the in-memory broker and on
RabbitMQ, with the real Redis and the real simulated provider (`agentq mockllm`)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

import pytest
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from redis.asyncio import Redis

from bench.stack import delete_namespace, delete_redis_keys, http
from services.common import events
from services.common.amqp import (
    POISON_AFTER_CRASHES,
    Broker,
    Bus,
    PublishFailed,
    RejectMessage,
    RequeueMessage,
    settlement,
)
from services.common.budget import SpendLedger
from services.common.cache import CachedAnswer, ExactCache
from services.common.config import AgentqConfig
from services.common.memory_broker import MemoryBroker, headers_match, topic_matches
from services.common.models import TIERS, Task, Usage
from services.common.settings import Settings
from services.common.topology import (
    ATTEMPT_HEADER,
    ERROR_HEADER,
    ROUTE_HEADER,
    SUBMIT_ROUTING_KEY,
    Names,
    declare_lane,
    declare_topology,
)
from services.common.work_headers import HELD_HEADER, ROUTED_TIER_HEADER, VERIFY_HEADER
from services.lanes.directory import LaneDirectory
from services.lanes.registry import LaneRegistry
from services.router.service import Router
from services.worker.controls import CostControls
from services.worker.limiter import SharedLimiter, pools_from_config, tenants_from_config
from services.worker.provider import Providers
from services.worker.service import Worker
from services.worker.throttle import Throttle
from tests.mock_server import running_mockllm

TENANT = "acme"
WAIT_S = 15.0


@pytest.fixture(autouse=True)
def strict_events() -> Iterator[None]:
    """Fail a test whose worker emits an event its model does not allow."""
    events.set_strict(True)
    yield
    events.set_strict(False)


@pytest.fixture
def namespace(request: pytest.FixtureRequest,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Yield a fresh namespace; delete its Redis keys afterwards, and its RabbitMQ topology
    when the test ran on RabbitMQ: the in-memory runs need no broker at all."""
    ns = f"agentq_test_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("AGENTQ_NAMESPACE", ns)
    yield ns
    base = Settings(namespace=ns)
    if getattr(request.node, "callspec", None) and \
            request.node.callspec.params.get("broker_kind") == "rabbitmq":
        # The harness declares the tenant's lanes itself, unregistered: name them.
        delete_namespace(base.amqp_url, base.redis_url, ns,
                         lanes=[(tier, TENANT) for tier in TIERS])
    else:
        delete_redis_keys(base.redis_url, ns)


@pytest.fixture(scope="module")
def mock_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_mockllm(tmp_path_factory.mktemp("mockllm")) as url:
        yield url


def fail_next(mock_url: str, count: int, status: int = 500) -> None:
    root = mock_url.removesuffix("/v1")
    answer = http("POST", f"{root}/control", {"fail_next": {"count": count, "status": status}})
    assert answer[0] == 200, answer


def tier_table(mock_url: str, **extra: Any) -> AgentqConfig:
    def tier(model: str, price: float) -> dict[str, Any]:
        return {"models": [{"provider": "mock", "model": model, "input_per_mtok": price,
                            "output_per_mtok": price * 4}]}
    return AgentqConfig.model_validate({
        "providers": {"mock": {"base_url": mock_url}},
        "tiers": {"cheap": tier("gpt-4o-mini", 0.15), "standard": tier("gpt-4o", 2.5),
                  "premium": tier("o1", 15.0)},
        **extra})


@dataclass
class Read:
    """A message read back from a queue, the same from either broker."""

    body: dict[str, Any]
    headers: dict[str, Any]
    routing_key: str


class Harness:
    """A Worker consuming every tier and the test tenant's lanes, on one broker."""

    def __init__(self, broker: Broker, names: Names, redis: Redis, worker: Worker,
                 read: Any) -> None:
        self.broker, self.names, self.redis, self.worker = broker, names, redis, worker
        self._read = read

    async def submit(self, task: Task, tier: str = "cheap", **headers: Any) -> None:
        await self.broker.publish(self.names.work, tier, task, message_id=task.id, headers={
            ROUTE_HEADER: "test", ATTEMPT_HEADER: 1, ROUTED_TIER_HEADER: tier, **headers})

    async def cache_answer(self, task: Task, output: str, answered_by: str) -> None:
        """Put an answer in the exact cache under the cheap tier, as a worker would."""
        await ExactCache(self.redis, self.names, 60).put(task, "cheap", CachedAnswer(
            output=output, model="gpt-4o-mini", tier="cheap",
            usage=Usage(prompt_tokens=20, completion_tokens=1), task_id=answered_by))

    async def take(self, queue: str, count: int = 1, timeout_s: float = WAIT_S) -> list[Read]:
        """Return the first `count` messages to reach `queue`, failing after `timeout_s`."""
        got: list[Read] = []
        deadline = time.monotonic() + timeout_s
        while len(got) < count:
            read = await self._read(queue)
            if read is not None:
                got.append(read)
                continue
            assert time.monotonic() < deadline, f"{queue}: {len(got)} of {count} messages"
            await asyncio.sleep(0.01)
        return got

    async def result(self) -> dict[str, Any]:
        return (await self.take(self.names.results_store))[0].body

    async def events(self, kind: str) -> list[dict[str, Any]]:
        """Return the events of type `kind` published so far."""
        found = []
        while (read := await self._read(events_queue(self.names))) is not None:
            found.append(read.body)
        return [event for event in found if event["type"] == kind]


def events_queue(names: Names) -> str:
    """Return the test's own queue of every event (the dashboard's gets only those it folds)."""
    return f"{names.ns}.test.events"


@asynccontextmanager
async def memory_side(names: Names) -> AsyncIterator[tuple[Broker, Any, Any]]:
    broker = MemoryBroker(names)
    channel = cast(AbstractChannel, broker.channel())
    await declare_topology(channel, names)
    broker.declare_queue(events_queue(names))
    broker.bind(events_queue(names), names.events, "#")

    async def read(queue: str) -> Read | None:
        message = broker.get(queue)
        return None if message is None else Read(json.loads(message.body),
                                                 dict(message.headers), message.routing_key)
    try:
        yield broker, channel, read
    finally:
        await broker.close()


@asynccontextmanager
async def rabbit_side(names: Names, amqp_url: str) -> AsyncIterator[tuple[Broker, Any, Any]]:
    bus = await Bus.connect(amqp_url, names, name="test-worker-handlers")
    connection: AbstractRobustConnection = bus.connection
    await declare_topology(await connection.channel(), names)
    reader = await connection.channel()
    events = await reader.declare_queue(events_queue(names), exclusive=True)
    await events.bind(names.events, routing_key="#")

    async def read(queue: str) -> Read | None:
        declared = await reader.declare_queue(queue, passive=True)
        message = await declared.get(no_ack=True, fail=False)
        if message is None:
            return None
        return Read(json.loads(message.body), dict(message.headers or {}),
                    str(message.routing_key))
    try:
        yield bus, await connection.channel(), read
    finally:
        await bus.stop_consuming(grace_s=2)
        await bus.close()


@asynccontextmanager
async def harness(kind: str, namespace: str, mock_url: str, config: AgentqConfig,
                  **settings: Any) -> AsyncIterator[Harness]:
    base = Settings(namespace=namespace, retry_base_ms=200, retry_max_ms=400, **settings)
    names = Names(namespace)
    side = memory_side(names) if kind == "memory" else rabbit_side(names, base.amqp_url)
    redis = Redis.from_url(base.redis_url)
    providers = Providers(config, 10.0)
    async with side as (broker, channel, read):
        limiter = SharedLimiter(redis, names, pools_from_config(config),
                                tenants_from_config(config), worker_id="test")
        exact = ExactCache(redis, names, 60)
        registry = LaneRegistry(redis, names, base.lane_idle_s, base.lane_retire_s)
        worker = Worker(broker, providers, config, base,
                        CostControls(names, config, redis, exact, None),
                        Throttle(limiter, {"mock": "reserved"}), 4,
                        LaneDirectory(channel, registry))
        # The router in front: tasks published to `agentq.tasks` reach the worker's lanes.
        router = Router(broker, exact, config, None, SpendLedger(redis, names),
                        LaneDirectory(channel, registry))
        await broker.consume(names.tasks, router.handle, prefetch=4)
        for tier in TIERS:
            await declare_lane(channel, names, tier, TENANT)
            await broker.consume(names.work_queue(tier), worker.handle, prefetch=4)
            await broker.consume(names.lane_queue(tier, TENANT), worker.handle, prefetch=4)
        try:
            yield Harness(broker, names, redis, worker, read)
        finally:
            await providers.close()
            await redis.aclose()


@pytest.fixture(params=["memory", "rabbitmq"])
def broker_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def task(**fields: Any) -> Task:
    return Task.model_validate({"tenant": TENANT, "kind": "classify",
                                "prompt": "Classify: the parcel never arrived. "
                                          "labels: complaint, praise",
                                "submitted_at": time.time(), **fields})


def test_a_task_is_answered_priced_and_announced(broker_kind: str, namespace: str,
                                                 mock_url: str) -> None:
    async def scenario() -> None:
        async with harness(broker_kind, namespace, mock_url, tier_table(mock_url)) as h:
            await h.submit(task(id="answered"))
            result = await h.result()
            assert (result["task_id"], result["status"], result["attempts"]) == (
                "answered", "succeeded", 1)
            assert result["output"] in ("complaint", "praise")
            assert result["cost_usd"] > 0 and result["model"] == "gpt-4o-mini"
            assert result["route_reason"] == "test"
            completed = await h.events("task.completed")
            assert [e["task_id"] for e in completed] == ["answered"]
    asyncio.run(scenario())


def test_a_message_that_is_not_a_task_is_rejected_with_the_reason(broker_kind: str,
                                                                  namespace: str,
                                                                  mock_url: str) -> None:
    async def scenario() -> None:
        async with harness(broker_kind, namespace, mock_url, tier_table(mock_url)) as h:
            await h.broker.publish(h.names.work, "cheap", {"kind": "chat"})
            rejected = (await h.take(h.names.rejected))[0]
            assert rejected.body == {"kind": "chat"}
            assert "not a Task" in str(rejected.headers[ERROR_HEADER])
    asyncio.run(scenario())


def test_a_failed_call_is_retried_through_a_delay_queue_and_then_answered(
        broker_kind: str, namespace: str, mock_url: str) -> None:
    async def scenario() -> None:
        async with harness(broker_kind, namespace, mock_url, tier_table(mock_url)) as h:
            fail_next(mock_url, 1, 500)
            await h.submit(task(id="retried"))
            result = await h.result()
            assert (result["status"], result["attempts"]) == ("succeeded", 2)
            retries = await h.events("task.retry")
            assert [(e["task_id"], e["data"]["attempt"]) for e in retries] == [("retried", 1)]
    asyncio.run(scenario())


def test_a_429_is_waited_out_without_spending_an_attempt(broker_kind: str, namespace: str,
                                                         mock_url: str) -> None:
    async def scenario() -> None:
        async with harness(broker_kind, namespace, mock_url, tier_table(mock_url)) as h:
            fail_next(mock_url, 1, 429)
            await h.submit(task(id="waited"))
            result = await h.result()
            assert (result["status"], result["attempts"]) == ("succeeded", 1)
            assert result["latency_ms"]["limiter"] > 0  # the wait is the limiter's, not llm
            assert await h.events("task.retry") == []
    asyncio.run(scenario())


def test_a_sampled_semantic_hit_is_checked_against_the_real_answer(
        broker_kind: str, namespace: str, mock_url: str) -> None:
    async def scenario() -> None:
        async with harness(broker_kind, namespace, mock_url, tier_table(mock_url)) as h:
            sample = {"key": "k", "output": "a different answer", "similarity": 0.97}
            await h.submit(task(id="verified"), **{VERIFY_HEADER: json.dumps(sample)})
            assert (await h.result())["status"] == "succeeded"
            verified = await h.events("cache.verify")
            assert [(e["task_id"], e["data"]["agreed"]) for e in verified] == [
                ("verified", False)]
    asyncio.run(scenario())


def test_a_task_out_of_attempts_fails_and_is_dead_lettered(broker_kind: str, namespace: str,
                                                           mock_url: str) -> None:
    async def scenario() -> None:
        async with harness(broker_kind, namespace, mock_url, tier_table(mock_url),
                           max_attempts=1) as h:
            fail_next(mock_url, 1, 500)
            await h.submit(task(id="dead"))
            result = await h.result()
            assert (result["status"], result["error"]["code"]) == ("failed",
                                                                   "provider_unavailable")
            dead = (await h.take(h.names.dead))[0]
            assert dead.body["id"] == "dead"
            assert dead.routing_key == "cheap.provider_unavailable"
            assert str(dead.headers[ERROR_HEADER]).startswith("provider_unavailable: ")
    asyncio.run(scenario())


def test_an_answer_failing_its_validator_climbs_the_tiers_then_fails(
        broker_kind: str, namespace: str, mock_url: str) -> None:
    async def scenario() -> None:
        async with harness(broker_kind, namespace, mock_url, tier_table(mock_url)) as h:
            await h.submit(task(id="climbs", validator={"labels": ["neither"]}))
            result = await h.result()
            assert (result["status"], result["error"]["code"]) == ("failed",
                                                                   "validation_failed")
            assert [c["tier"] for c in result["calls"]] == list(TIERS)
            assert result["cost_usd"] == pytest.approx(sum(c["cost_usd"]
                                                           for c in result["calls"]))
            escalated = await h.events("task.escalated")
            assert [e["data"]["to_tier"] for e in escalated] == ["standard", "premium"]
    asyncio.run(scenario())


def test_a_tenant_at_its_hard_limit_is_failed_or_held(broker_kind: str, namespace: str,
                                                      mock_url: str) -> None:
    async def scenario(action: str) -> None:
        config = tier_table(mock_url, tenants={TENANT: {"budget": {
            "daily_hard_usd": 1.0, "hard_action": action, "hold_s": 30}}})
        async with harness(broker_kind, namespace, mock_url, config) as h:
            await SpendLedger(h.redis, h.names).add(TENANT, 5.0)
            await h.submit(task(id=f"over-{action}"))
            if action == "fail":
                result = await h.result()
                assert result["error"]["code"] == "budget_exceeded"
                return
            held = (await h.take(h.names.retry_queue(32_000)))[0]
            assert (held.body["id"], held.headers[HELD_HEADER]) == ("over-hold", 1)
    asyncio.run(scenario("fail"))
    asyncio.run(scenario("hold"))


def test_a_twin_answered_meanwhile_is_published_without_a_call(broker_kind: str,
                                                               namespace: str,
                                                               mock_url: str) -> None:
    async def scenario() -> None:
        async with harness(broker_kind, namespace, mock_url, tier_table(mock_url)) as h:
            twin = task(id="twin")
            await h.cache_answer(twin, "praise", "first")
            await h.submit(twin)
            result = await h.result()
            assert (result["output"], result["cache"], result["cached_from"],
                    result["cost_usd"]) == ("praise", "exact", "first", 0.0)
            assert result["route_reason"] == "test;dedup"
    asyncio.run(scenario())


def test_a_routed_task_reaches_its_lane_and_is_answered(broker_kind: str, namespace: str,
                                                       mock_url: str) -> None:
    async def scenario() -> None:
        async with harness(broker_kind, namespace, mock_url, tier_table(mock_url, routing={
                "kinds": {"classify": "standard"}})) as h:
            await h.broker.publish(h.names.tasks, SUBMIT_ROUTING_KEY, task(id="routed"))
            result = await h.result()
            assert (result["status"], result["tier"], result["model"]) == (
                "succeeded", "standard", "gpt-4o")
            assert "classify" in result["route_reason"]
            routed = await h.events("task.routed")
            assert [(e["data"]["tier"], e["data"]["cache"]) for e in routed] == [
                ("standard", "miss")]
    asyncio.run(scenario())


def test_a_cached_answer_is_published_by_the_router(broker_kind: str, namespace: str,
                                                   mock_url: str) -> None:
    async def scenario() -> None:
        async with harness(broker_kind, namespace, mock_url, tier_table(mock_url)) as h:
            hit = task(id="hit")
            await h.cache_answer(hit, "complaint", "earlier")
            await h.broker.publish(h.names.tasks, SUBMIT_ROUTING_KEY, hit)
            result = await h.result()
            assert (result["cache"], result["cached_from"], result["attempts"]) == (
                "exact", "earlier", 0)
            assert await h.events("task.started") == []  # no worker ran it
    asyncio.run(scenario())


def test_the_memory_broker_routes_as_rabbitmq_exchange_types_do() -> None:

    assert topic_matches("#", "acme.succeeded") and topic_matches("acme.*", "acme.failed")
    assert not topic_matches("acme.*", "acme.a.b") and topic_matches("a.#.c", "a.c")
    assert headers_match({"x-match": "all", "agentq-delay": 250}, {"agentq-delay": 250})
    assert not headers_match({"x-match": "all", "agentq-delay": 250}, {"agentq-delay": 500})


@pytest.mark.parametrize(("error", "deliveries", "outcome"), [
    (None, 1, "ack"),
    (RejectMessage("bad"), 1, "reject"),
    (RequeueMessage("later"), 9, "requeue"),
    (PublishFailed("no confirm"), 9, "requeue"),
    (RuntimeError("bug"), POISON_AFTER_CRASHES - 1, "retry"),
    (RuntimeError("bug"), POISON_AFTER_CRASHES, "poison"),
])
def test_both_brokers_settle_by_one_rule(error: Exception | None, deliveries: int,
                                         outcome: str) -> None:
    assert settlement(error, deliveries) == outcome


def test_the_memory_broker_settles_as_bus_does(namespace: str) -> None:
    """A crash-looping message is parked as poison; one given back counts its deliveries up
    to the queue's delivery limit, then is dead-lettered (quorum queues)."""
    async def scenario() -> None:
        names = Names(namespace)
        broker = MemoryBroker(names)
        await declare_topology(cast(AbstractChannel, broker.channel()), names)
        seen: list[int] = []

        async def crashes(message: Any) -> None:
            seen.append(int(message.headers.get("x-delivery-count", 0)))
            raise RuntimeError("boom")

        async def not_now(message: Any) -> None:
            raise RequeueMessage("later")

        await broker.consume(names.work_queue("cheap"), crashes, prefetch=1)
        await broker.consume(names.work_queue("premium"), not_now, prefetch=1)
        await broker.publish(names.work, "cheap", task(id="poison"))
        await broker.publish(names.work, "premium", task(id="patient"))
        deadline = time.monotonic() + WAIT_S
        while not (broker.messages(names.rejected) and broker.messages(names.dead)):
            assert time.monotonic() < deadline, "nothing parked"
            await asyncio.sleep(0.01)
        parked = broker.messages(names.rejected)[0]
        assert seen == list(range(POISON_AFTER_CRASHES))
        assert str(parked.headers[ERROR_HEADER]).startswith(
            f"handler failed {POISON_AFTER_CRASHES} times: RuntimeError: boom")
        dead = broker.messages(names.dead)[0]
        assert json.loads(dead.body)["id"] == "patient"
        assert dead.headers["x-delivery-count"] == 21
        await broker.close()
    asyncio.run(scenario())
