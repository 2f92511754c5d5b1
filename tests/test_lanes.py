"""Tenant lanes (services.lanes): the names, and against the real RabbitMQ and Redis in
a namespace of their own (the `namespace` fixture: `agentq_test_<uuid8>`, deleted afterwards
with its lanes): declaring and registering lanes, watching the registry, counting a tier's
backlog over its lanes, and deleting them with the namespace."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar, cast

import pytest
import redis
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from bench.stack import (
    AMQP_URL,
    Pipeline,
    delete_namespace,
    free_port,
    running_pipeline,
    wait_until,
)
from services.autoscale.depth import Depth, DepthProbe
from services.cli import main as agentq
from services.common.amqp import Bus
from services.common.memory_broker import MemoryBroker
from services.common.models import TIERS, Task
from services.common.queue_depth import QueueDepth, WorkQueues, read_passive, tier_totals
from services.common.settings import Settings
from services.common.topology import (
    Names,
    declare_lane,
    declare_topology,
    lane_route,
    tier_of,
)
from services.dashboard.sampler import QueueSampler
from services.lanes import plans as lane_plans
from services.lanes.directory import LaneDirectory
from services.lanes.plans import Lane
from services.lanes.registry import LaneRegistry, registered_lanes, registry_keys
from services.lanes.state import LaneState
from services.lanes.watcher import LaneFailed, LaneWatcher
from tests.conftest import Rabbit
from tests.lane_helpers import lane_sweeper, with_broker

T = TypeVar("T")
IDLE_S = 600.0


# --- names ----------------------------------------------------------------------------------

def test_lane_names() -> None:
    names = Names("ns")
    assert lane_route("cheap", "acme") == "cheap.acme"
    assert names.lane_queue("cheap", "acme") == "ns.work.cheap.acme"
    assert names.lane_queue("cheap", "acme") == f"{names.work_queue('cheap')}.acme"
    assert names.lanes_key("premium") == "ns:lanes:premium"
    # A tenant may have dots in its name (`^[\w.\-]+$`); the tier is what precedes the first.
    assert lane_route("standard", "eu.acme") == "standard.eu.acme"
    assert names.lane_queue("standard", "eu.acme") == "ns.work.standard.eu.acme"


@pytest.mark.parametrize(("route", "tier"), [
    ("cheap", "cheap"), ("cheap.acme", "cheap"), ("premium.eu.acme-1", "premium"),
    ("standard.", "standard"),
])
def test_tier_of(route: str, tier: str) -> None:
    assert tier_of(route) == tier


def test_tier_of_inverts_lane_route() -> None:
    for tier in TIERS:
        assert tier_of(tier) == tier
        for tenant in ("acme", "eu.acme", "a-b_c"):
            assert tier_of(lane_route(tier, tenant)) == tier


def test_tier_totals_sum_a_tier_over_its_queues() -> None:
    names = Names("ns")
    cheap, standard = names.work_queue("cheap"), names.work_queue("standard")
    acme, beta = names.lane_queue("cheap", "acme"), names.lane_queue("cheap", "beta")
    queues = {"cheap": [cheap, acme, beta], "standard": [standard],
              "premium": [names.work_queue("premium")]}
    readings = [QueueDepth(cheap, 1, 0, 2, "management"),
                QueueDepth(acme, 5, 3, 2, "management"),
                QueueDepth(beta, 7, 4, 1, "management"),
                QueueDepth(standard, 2, None, 3),
                QueueDepth(names.tasks, 100, None, 0)]  # not a work queue: ignored
    totals = tier_totals(readings, queues, names)
    assert totals == {
        # consumers: the most on any one queue (every worker of the tier consumes all three)
        "cheap": QueueDepth(cheap, 13, 7, 2, "management"),
        "standard": QueueDepth(standard, 2, None, 3, "amqp"),
    }  # premium: none of its queues was read
    # One queue without an unacked count makes the tier's unknown, and its source amqp.
    partial = tier_totals([*readings[:2], QueueDepth(beta, 7, None, 1)], queues, names)
    assert partial["cheap"] == QueueDepth(cheap, 13, None, 2, "amqp")
    # A tier read through its lanes alone (its own queue missing) still has its total.
    assert tier_totals(readings[1:3], queues, names)["cheap"] == QueueDepth(
        cheap, 12, 7, 2, "management")


# --- against the real broker and cache ------------------------------------------------------

@pytest.fixture
def rabbit(namespace: str) -> Iterator[Rabbit]:
    client = Rabbit(Settings(namespace=namespace).amqp_url)
    yield client
    client.close()


def _dead_redis() -> Redis:
    """A client of a port nobody listens on: every command fails to connect (at once: no
    retries)."""
    return Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1, socket_timeout=1,
                 retry=Retry(NoBackoff(), 0))


def _registered(names: Names, tier: str) -> set[str]:
    client = redis.Redis.from_url(Settings(namespace=names.ns).redis_url)
    try:
        return {m.decode() for m in client.smembers(names.lanes_key(tier))}
    finally:
        client.close()


def test_route_declares_binds_and_registers_the_lane(names: Names, rabbit: Rabbit) -> None:
    lane = names.lane_queue("cheap", "acme")
    assert rabbit.depth(lane) is None

    async def scenario(connection: AbstractRobustConnection, cache: Redis
                       ) -> tuple[str, list[tuple[str, str]]]:
        directory = LaneDirectory(await connection.channel(), LaneRegistry(cache, names, IDLE_S))
        route = await directory.route("cheap", "acme")
        return route, await registered_lanes(cache, names, TIERS)

    route, registered = asyncio.run(with_broker(names, scenario))
    assert route == "cheap.acme"
    assert registered == [("cheap", "acme")]
    assert _registered(names, "cheap") == {"acme"}
    assert rabbit.depth(lane) == (0, 0)  # declared
    # Bound: a message on the work exchange under the lane's key lands in the lane alone.
    rabbit.publish(names.work, route, b'{"n": 1}')
    assert rabbit.get(lane).body == b'{"n": 1}'
    assert rabbit.count(names.work_queue("cheap")) == 0


def test_route_falls_back_to_the_tier_while_the_registry_is_unreachable(
        names: Names, rabbit: Rabbit) -> None:
    async def scenario(connection: AbstractRobustConnection, cache: Redis
                       ) -> tuple[str, str, str]:
        directory = LaneDirectory(await connection.channel(),
                                  LaneRegistry(_dead_redis(), names, IDLE_S))
        outage = await directory.route("cheap", "acme")
        again = await directory.route("cheap", "acme")  # not remembered as registered
        await directory.registry.redis.aclose()
        # the registry is back: the next task registers the lane
        directory.registry = LaneRegistry(cache, names, IDLE_S)
        return outage, again, await directory.route("cheap", "acme")

    outage, again, back = asyncio.run(with_broker(names, scenario))
    assert (outage, again) == ("cheap", "cheap")  # workers could not find the lane yet
    assert back == "cheap.acme"
    assert _registered(names, "cheap") == {"acme"}
    rabbit.publish(names.work, outage, b"to the tier")
    assert rabbit.get(names.work_queue("cheap")).body == b"to the tier"


def test_a_tenant_that_cannot_name_a_queue_uses_the_tier(names: Names) -> None:
    # Task.tenant admits any \w (é, 漢); AMQP queue names only ASCII, 255 at most.
    assert Task(prompt="x", tenant="café").tenant == "café"
    long_ns = Names(names.ns + "_" + "x" * 190)

    async def scenario(connection: AbstractRobustConnection, cache: Redis) -> list[str]:
        directory = LaneDirectory(await connection.channel(), LaneRegistry(cache, names, IDLE_S))
        long = LaneDirectory(await connection.channel(), LaneRegistry(cache, long_ns, IDLE_S))
        return [await directory.route("cheap", "café"), await directory.route("cheap", "漢"),
                await long.route("cheap", "t" * 64), await directory.route("cheap", "t" * 64)]

    assert asyncio.run(with_broker(names, scenario)) == ["cheap", "cheap", "cheap",
                                                          f"cheap.{'t' * 64}"]
    assert _registered(names, "cheap") == {"t" * 64}


def test_a_registered_lane_keeps_its_route_through_a_registry_outage(
        names: Names, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario(connection: AbstractRobustConnection, cache: Redis) -> list[str]:
        directory = LaneDirectory(await connection.channel(), LaneRegistry(cache, names, IDLE_S))
        routes = [await directory.route("standard", "acme")]
        dead = _dead_redis()
        directory.registry = LaneRegistry(dead, names, IDLE_S)
        routes.append(await directory.route("standard", "acme"))  # registered just now
        monkeypatch.setattr(lane_plans, "REGISTER_EVERY_S", 0.0)
        routes.append(await directory.route("standard", "acme"))  # re-registering fails
        await dead.aclose()
        return routes

    assert asyncio.run(with_broker(names, scenario)) == ["standard.acme"] * 3


class LaneBroker(MemoryBroker):
    """The in-memory broker, saying which lanes it started and stopped consuming; it cannot
    consume the lanes in `failing` (yet)."""

    def __init__(self, names: Names, failing: set[Lane] | None = None) -> None:
        super().__init__(names)
        self.failing = failing if failing is not None else set()
        self.calls: list[str] = []
        self._lanes: dict[str, Lane] = {}

    def _lane(self, queue: str) -> Lane:
        tier, tenant = queue.removeprefix(f"{self.names.work}.").split(".", 1)
        return tier, tenant

    async def consume(self, queue: str, handler: Callable[[Any], Awaitable[None]],
                      prefetch: int) -> str:
        lane = self._lane(queue)
        if lane in self.failing:
            raise ConnectionError("cannot consume it yet")
        tag = await super().consume(queue, handler, prefetch)
        self._lanes[tag] = lane
        self.calls.append(f"start {lane[0]}/{lane[1]}")
        return tag

    async def cancel(self, tag: str) -> None:
        lane = self._lanes[tag]
        self.calls.append(f"stop {lane[0]}/{lane[1]}")
        await super().cancel(tag)


async def _watcher(registry: LaneRegistry, tiers: list[str], broker: MemoryBroker,
                   handler: Callable[[Any], Awaitable[None]] | None = None,
                   resync_s: float | None = None) -> LaneWatcher:
    """A watcher consuming lanes from the in-memory broker, as a worker does from RabbitMQ."""
    await declare_topology(cast(AbstractChannel, broker.channel()), broker.names)
    return LaneWatcher(registry, tiers, LaneState(broker),
                       cast(AbstractChannel, broker.channel()), handler or _ignore, 4,
                       resync_s=resync_s)


def test_watcher_starts_each_new_lane_once(names: Names) -> None:
    async def scenario(connection: AbstractRobustConnection, cache: Redis) -> list[list[str]]:
        broker = LaneBroker(names, failing={("premium", "flaky")})
        registry = LaneRegistry(cache, names, IDLE_S)
        watcher = await _watcher(registry, ["cheap", "premium"], broker)
        rounds = []
        await watcher.poll()  # nothing registered
        rounds.append(list(broker.calls))
        await registry.touch("cheap", "acme")
        # A lane registered by a version that kept no times is consumed like any other.
        await cache.sadd(names.lanes_key("cheap"), "beta")
        await registry.touch("standard", "other-tier")  # not watched
        await watcher.poll()
        await watcher.poll()  # nothing new: no call
        rounds.append(list(broker.calls))
        await registry.touch("premium", "flaky")
        await registry.touch("cheap", "gamma")
        with pytest.raises(LaneFailed, match="flaky"):
            await watcher.poll()  # one lane failing does not hold up the others
        rounds.append(list(broker.calls))
        broker.failing.clear()  # the failed lane is started again, the others are not
        await watcher.poll()
        await watcher.poll()
        rounds.append(list(broker.calls))
        await broker.close()
        return rounds

    rounds = asyncio.run(with_broker(names, scenario))
    assert rounds == [
        [],
        ["start cheap/acme", "start cheap/beta"],
        ["start cheap/acme", "start cheap/beta", "start cheap/gamma"],
        ["start cheap/acme", "start cheap/beta", "start cheap/gamma", "start premium/flaky"],
    ]


def test_lane_state_consumes_a_lane_once_and_counts_what_it_holds() -> None:
    names = Names("state")

    async def scenario() -> list[object]:
        broker = LaneBroker(names)
        await declare_topology(cast(AbstractChannel, broker.channel()), names)
        await declare_lane(cast(AbstractChannel, broker.channel()), names, "cheap", "acme")
        lanes, release = LaneState(broker), asyncio.Event()

        async def hold(message: object) -> None:
            await release.wait()

        lane = ("cheap", "acme")
        await lanes.consume(lane, hold, prefetch=2)
        await lanes.consume(lane, hold, prefetch=2)  # consumed already: no second consumer
        for n in range(3):
            await broker.publish(names.work, "cheap.acme", {"n": n})
        await _eventually(lambda: lanes.in_hand(lane) == 2)  # the prefetch
        out: list[object] = [sorted(lanes.consumed), list(broker.calls)]
        await lanes.let_go(lane)
        out += [lanes.consumed, lanes.in_hand(lane)]  # no longer its lane to count
        release.set()
        await asyncio.sleep(0.05)
        out.append(len(broker.messages(names.lane_queue(*lane))))  # the third was not taken
        await broker.close()
        return out

    assert asyncio.run(scenario()) == [[("cheap", "acme")], ["start cheap/acme"], set(), 0, 1]


async def _age(cache: Redis, names: Names, tier: str, tenant: str, seconds: float) -> None:
    """Make a lane look last published to `seconds` ago (by Redis's clock)."""
    now, micros = await cache.time()
    await cache.zadd(names.lanes_seen_key(tier), {tenant: now + micros / 1e6 - seconds})


def test_touch_records_use_by_redis_time_and_bumps_the_version_on_new_or_waking_lanes(
        names: Names) -> None:
    async def scenario(connection: AbstractRobustConnection, cache: Redis
                       ) -> dict[str, object]:
        registry = LaneRegistry(cache, names, IDLE_S)
        out: dict[str, object] = {"empty": await registry.version(["cheap"])}
        out["touched"] = [await registry.touch("cheap", "acme")]
        out["new"] = await registry.version(["cheap"])
        seconds, micros = await cache.time()
        out["redis_now"] = seconds + micros / 1e6
        out["seen_after_first_touch"] = (await registry.view(["cheap"])).seen[("cheap", "acme")]
        # in use: nothing for workers to do
        out["touched"].append(await registry.touch("cheap", "acme"))  # type: ignore[attr-defined]
        out["again"] = await registry.version(["cheap"])
        await _age(cache, names, "cheap", "acme", IDLE_S + 5)
        view = await registry.view(["cheap"])
        out["idle"] = view.idle(IDLE_S)
        await registry.touch("cheap", "acme")  # wakes it
        out["woken"] = await registry.version(["cheap"])
        out["awake"] = (await registry.view(["cheap"])).idle(IDLE_S)
        return out

    out = asyncio.run(with_broker(names, scenario))
    assert out["empty"] == (0, 0)
    assert out["touched"] == ["new", "ok"]
    assert out["new"] == (1, 1)  # version, lanes of cheap
    assert out["again"] == (1, 1)
    assert out["idle"] == {("cheap", "acme")}
    assert out["woken"] == (2, 1)
    assert out["awake"] == set()
    assert 0 <= float(out["redis_now"]) - float(out["seen_after_first_touch"]) < 5  # type: ignore[arg-type]


def test_watcher_stops_an_idle_lane_once_nothing_is_in_hand_and_restarts_it_when_it_wakes(
        names: Names) -> None:
    async def scenario(connection: AbstractRobustConnection, cache: Redis) -> list[str]:
        broker, release = LaneBroker(names), asyncio.Event()

        async def hold(message: object) -> None:
            await release.wait()

        registry = LaneRegistry(cache, names, IDLE_S)
        watcher = await _watcher(registry, ["cheap"], broker, hold, resync_s=0.0)
        await registry.touch("cheap", "acme")
        await registry.touch("cheap", "beta")
        await watcher.poll()
        for n in range(2):  # two of acme's tasks in hand
            await broker.publish(names.work, "cheap.acme", {"n": n})
        await _eventually(lambda: watcher.lanes.in_hand(("cheap", "acme")) == 2)
        await _age(cache, names, "cheap", "acme", IDLE_S + 1)
        await _age(cache, names, "cheap", "beta", IDLE_S + 1)
        await watcher.poll()  # beta stops; acme's two tasks in hand keep it
        broker.calls.append("|")
        release.set()
        await _eventually(lambda: watcher.lanes.in_hand(("cheap", "acme")) == 0)
        await watcher.poll()  # now acme stops too
        await watcher.poll()  # idle and stopped: nothing more
        broker.calls.append("|")
        await registry.touch("cheap", "acme")  # its tenant's next task
        await watcher.poll()
        await broker.close()
        return broker.calls

    assert asyncio.run(with_broker(names, scenario)) == [
        "start cheap/acme", "start cheap/beta", "stop cheap/beta", "|", "stop cheap/acme", "|",
        "start cheap/acme"]


def test_watcher_keeps_consuming_lanes_a_restarted_registry_lost(names: Names) -> None:
    async def scenario(connection: AbstractRobustConnection, cache: Redis) -> set[Lane]:
        broker = LaneBroker(names)
        registry = LaneRegistry(cache, names, IDLE_S)
        watcher = await _watcher(registry, ["cheap"], broker, resync_s=0.0)
        await registry.touch("cheap", "acme")
        await watcher.poll()
        await cache.delete(*registry_keys(names, TIERS))  # Redis restarted, empty
        await watcher.poll()
        await broker.close()
        return watcher.lanes.consumed

    assert asyncio.run(with_broker(names, scenario)) == {("cheap", "acme")}


def test_sweeper_wakes_idle_lanes_that_hold_messages_and_adopts_untimed_ones(
        names: Names, rabbit: Rabbit) -> None:
    _fill(names, rabbit)  # cheap: acme (3 tasks), beta (2); standard: acme (4)

    async def scenario(connection: AbstractRobustConnection, cache: Redis
                       ) -> tuple[list[Lane], list[Lane], set[Lane], dict[Lane, float | None]]:
        registry = LaneRegistry(cache, names, IDLE_S)
        await registry.touch("cheap", "empty")  # declared by no one: its queue is missing
        await declare_lane(await connection.channel(), names, "cheap", "drained")
        await registry.touch("cheap", "drained")
        for tenant in ("acme", "beta", "empty", "drained"):
            await _age(cache, names, "cheap", tenant, IDLE_S + 1)
        await cache.zrem(names.lanes_seen_key("standard"), "acme")  # an untimed lane
        first = lane_sweeper(registry, connection, "worker-1")
        second = lane_sweeper(registry, connection, "worker-2")
        woken = await first.sweep()
        other = await second.sweep()  # the job is taken for this round
        view = await registry.view(TIERS)
        return woken, other, view.idle(IDLE_S), dict(view.seen)

    woken, other, idle, seen = asyncio.run(with_broker(names, scenario))
    assert woken == [("cheap", "acme"), ("cheap", "beta")]
    assert other == []
    assert idle == {("cheap", "drained"), ("cheap", "empty")}
    assert seen[("standard", "acme")] is not None  # adopted


RETIRE_S = 3600.0


def test_sweeper_retires_long_idle_lanes_that_hold_nothing(names: Names, rabbit: Rabbit) -> None:
    _fill(names, rabbit)  # cheap: acme (3 tasks), beta (2); standard: acme (4)

    async def scenario(connection: AbstractRobustConnection, cache: Redis
                       ) -> tuple[list[Lane], dict[Lane, float | None], list[Lane]]:
        registry = LaneRegistry(cache, names, IDLE_S, RETIRE_S)
        channel = await connection.channel()
        for tenant in ("gone", "held", "recent"):
            await declare_lane(channel, names, "cheap", tenant)
            await registry.touch("cheap", tenant)
        # held: a consumer holds its one task unacked (ready 0, but not empty)
        rabbit.publish(names.work, "cheap.held", b'{"n": 0}')
        holder = await connection.channel()
        await holder.set_qos(prefetch_count=1)
        await (await holder.get_queue(names.lane_queue("cheap", "held"))).consume(_ignore)
        await asyncio.sleep(0.3)
        for tenant in ("acme", "gone", "held"):
            await _age(cache, names, "cheap", tenant, RETIRE_S + 1)
        for tenant in ("beta", "recent"):  # idle, not long enough to retire
            await _age(cache, names, "cheap", tenant, IDLE_S + 1)
        woken = await lane_sweeper(registry, connection, "worker-1").sweep()
        view = await registry.view(["cheap"])
        retiring = [lane for lane in view.seen
                    if await cache.exists(names.redis_key("lanes", "cheap", "retiring", lane[1]))]
        await holder.close()
        return woken, dict(view.seen), retiring

    woken, seen, retiring = asyncio.run(with_broker(names, scenario))
    assert woken == [("cheap", "acme"), ("cheap", "beta")]  # work in them: woken, not retired
    assert rabbit.depth(names.lane_queue("cheap", "gone")) is None  # deleted
    assert ("cheap", "gone") not in seen  # and out of the registry
    assert rabbit.depth(names.lane_queue("cheap", "held")) is not None
    assert seen[("cheap", "held")] is not None  # kept, registered again
    assert rabbit.depth(names.lane_queue("cheap", "recent")) == (0, 0)
    assert retiring == []  # no mark left behind


def test_a_retiring_lane_sends_work_to_the_tier_and_a_retired_one_is_declared_again(
        names: Names, rabbit: Rabbit, monkeypatch: pytest.MonkeyPatch) -> None:
    lane = names.lane_queue("cheap", "acme")
    monkeypatch.setattr(lane_plans, "REGISTER_EVERY_S", 0.0)  # every route registers

    async def retire(connection: AbstractRobustConnection, registry: LaneRegistry) -> None:
        token = await registry.begin_retiring("cheap", "acme")
        assert token is not None
        await (await connection.channel()).queue_delete(lane)
        await registry.end_retiring("cheap", "acme", token, deleted=True)

    async def scenario(connection: AbstractRobustConnection, cache: Redis) -> list[object]:
        registry = LaneRegistry(cache, names, IDLE_S, RETIRE_S)
        directory = LaneDirectory(await connection.channel(), registry)
        out: list[object] = [await directory.route("cheap", "acme")]
        # Retired while this publisher still knew it as declared: declared again.
        await _age(cache, names, "cheap", "acme", RETIRE_S + 1)
        await retire(connection, registry)
        out.append(rabbit.depth(lane))
        out.append(await directory.route("cheap", "acme"))
        out.append(rabbit.depth(lane))
        # While it is being retired, work goes to the tier's queue.
        await _age(cache, names, "cheap", "acme", RETIRE_S + 1)
        assert await registry.begin_retiring("cheap", "acme")
        out.append(await directory.route("cheap", "acme"))
        return out

    assert asyncio.run(with_broker(names, scenario)) == [
        "cheap.acme", None, "cheap.acme", (0, 0), "cheap"]


def test_publish_falls_back_to_the_tier_when_a_lane_vanished_under_a_fresh_registration(
        names: Names, rabbit: Rabbit) -> None:
    async def scenario(connection: AbstractRobustConnection, cache: Redis) -> str:
        bus = await Bus.connect(Settings(namespace=names.ns).amqp_url, names)
        try:
            directory = LaneDirectory(await connection.channel(),
                                      LaneRegistry(cache, names, IDLE_S, RETIRE_S))
            assert await directory.route("cheap", "acme") == "cheap.acme"
            channel = await connection.channel()
            await channel.queue_delete(names.lane_queue("cheap", "acme"))  # by hand
            await directory.publish(bus, "cheap", "acme", Task(prompt="still delivered",
                                                               tenant="acme"))
            return await directory.route("cheap", "acme")  # forgotten: declared again
        finally:
            await bus.close()

    assert asyncio.run(with_broker(names, scenario)) == "cheap.acme"
    body = rabbit.get(names.work_queue("cheap")).body
    assert Task.model_validate_json(body).messages[0].content == "still delivered"
    assert rabbit.depth(names.lane_queue("cheap", "acme")) == (0, 0)


def test_bus_cancels_a_consumer_and_closes_its_channel_once_its_messages_are_settled(
        names: Names, rabbit: Rabbit) -> None:
    lane = names.lane_queue("cheap", "acme")
    _fill(names, rabbit)  # 3 tasks in acme's lane

    async def scenario(connection: AbstractRobustConnection, cache: Redis
                       ) -> list[tuple[int, int] | None | int | bool]:
        bus = await Bus.connect(Settings(namespace=names.ns).amqp_url, names)
        release = asyncio.Event()
        handled: list[bytes] = []

        async def handle(message: AbstractIncomingMessage) -> None:
            handled.append(message.body)
            await release.wait()

        try:
            tag = await bus.consume(lane, handle, prefetch=2)
            await _eventually(lambda: bus.in_hand(tag) == 2)
            await bus.cancel(tag)
            await asyncio.sleep(0.3)  # the third task is not delivered: nobody consumes it
            readings: list[tuple[int, int] | None | int | bool] = [
                bus.in_hand(tag), len(handled)]
            release.set()  # the two in hand finish and are acked on their open channel
            await _eventually(lambda: bus.in_hand(tag) == 0)
            await asyncio.sleep(0.3)
            readings += [len(handled), await _depth(connection, lane)]
            again = await bus.consume(lane, handle, prefetch=2)  # a channel of its own
            assert again != tag
            await _eventually(lambda: len(handled) == 3)
            await _eventually(lambda: bus.in_hand(again) == 0)
            await asyncio.sleep(0.3)
            readings.append(await _depth(connection, lane))
            return readings
        finally:
            await bus.close()

    in_hand, during, handled, after, drained = asyncio.run(with_broker(names, scenario))
    assert (in_hand, during) == (2, 2)
    assert handled == 2
    # The two were acked, not given back; the third stayed: nobody consumes the lane now.
    assert after == (1, 0)
    assert drained == (0, 1)


async def _depth(connection: AbstractRobustConnection, queue: str) -> tuple[int, int] | None:
    readings = await read_passive(connection, [queue])
    return (readings[0].ready, readings[0].consumers) if readings else None


async def _eventually(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def _ignore(message: AbstractIncomingMessage) -> None:
    pass


def _fill(names: Names, rabbit: Rabbit) -> None:
    """Register lanes (cheap: acme, beta; standard: acme) and queue 1 + 3 + 2 cheap tasks (tier
    queue, acme, beta) and 4 standard ones (acme's lane)."""
    async def register(connection: AbstractRobustConnection, cache: Redis) -> None:
        directory = LaneDirectory(await connection.channel(), LaneRegistry(cache, names, IDLE_S))
        for tier, tenant in (("cheap", "acme"), ("cheap", "beta"), ("standard", "acme")):
            await directory.route(tier, tenant)

    asyncio.run(with_broker(names, register))
    for route, count in (("cheap", 1), ("cheap.acme", 3), ("cheap.beta", 2),
                         ("standard.acme", 4)):
        for n in range(count):
            rabbit.publish(names.work, route, f'{{"n": {n}}}')


def test_work_queues_list_each_tier_with_its_lanes(names: Names, rabbit: Rabbit) -> None:
    _fill(names, rabbit)

    async def scenario(connection: AbstractRobustConnection, cache: Redis
                       ) -> tuple[dict[str, list[str]], list[str]]:
        return (await WorkQueues(cache, names, TIERS).read(),
                await WorkQueues(cache, names, ["standard"]).flat())

    listing, standard = asyncio.run(with_broker(names, scenario))
    assert listing == {
        "cheap": [names.work_queue("cheap"), names.lane_queue("cheap", "acme"),
                  names.lane_queue("cheap", "beta")],
        "standard": [names.work_queue("standard"), names.lane_queue("standard", "acme")],
        "premium": [names.work_queue("premium")]}
    assert standard == [names.work_queue("standard"), names.lane_queue("standard", "acme")]


def test_work_queues_without_the_registry(names: Names, rabbit: Rabbit) -> None:
    _fill(names, rabbit)

    async def scenario(connection: AbstractRobustConnection, cache: Redis
                       ) -> tuple[list[str], list[str], list[str]]:
        dead = _dead_redis()
        never_read = await WorkQueues(dead, names, ["cheap"]).flat()
        work = WorkQueues(cache, names, ["cheap"])
        listed = await work.flat()
        work.redis = dead
        during = await work.flat()
        await dead.aclose()
        return never_read, listed, during

    never_read, listed, during = asyncio.run(with_broker(names, scenario))
    assert never_read == [names.work_queue("cheap")]  # the tier's own queue only
    assert len(listed) == 3
    assert during == listed  # an outage keeps the lanes listed last


def test_autoscaler_depth_sums_every_lane_of_its_tiers(names: Names, rabbit: Rabbit) -> None:
    _fill(names, rabbit)

    async def scenario(connection: AbstractRobustConnection, cache: Redis) -> list[Depth]:
        url = Settings().amqp_url
        every = DepthProbe(connection, url, WorkQueues(cache, names, TIERS).flat, 8, None)
        cheap = DepthProbe(connection, url, WorkQueues(cache, names, ["cheap"]).flat, 8, None)
        blind = DepthProbe(connection, url, WorkQueues(_dead_redis(), names, ["cheap"]).flat,
                           8, None)
        depths = [await every.sample(None), await cheap.sample(None), await blind.sample(None)]
        # A consumer on acme's lane takes its 3 messages into its (unbounded) window: they
        # leave `ready`, and the lane's consumer counts as the tier's.
        consumer = await connection.channel()
        await (await consumer.get_queue(names.lane_queue("cheap", "acme"))).consume(_ignore)
        await asyncio.sleep(0.2)
        depths.append(await cheap.sample(reported_in_flight=3))
        return depths

    every, cheap, blind, consumed = asyncio.run(with_broker(names, scenario))
    assert every == Depth(ready=10, unacked=0, consumers=0, source="estimate")
    assert cheap == Depth(ready=6, unacked=0, consumers=0, source="estimate")
    assert blind == Depth(ready=1, unacked=0, consumers=0, source="estimate")  # tier queue only
    assert consumed == Depth(ready=3, unacked=3, consumers=1, source="estimate")


def test_dashboard_samples_a_tier_as_one_reading_over_its_lanes(
        names: Names, rabbit: Rabbit) -> None:
    _fill(names, rabbit)
    rabbit.publish(names.tasks, "task", b'{"n": 0}')

    async def scenario(connection: AbstractRobustConnection, cache: Redis
                       ) -> dict[str, tuple[int, int]]:
        consumer = await connection.channel()
        await (await consumer.get_queue(names.lane_queue("cheap", "beta"))).consume(_ignore)
        sampler = QueueSampler(connection, Settings().amqp_url, names.queues(), None,
                               WorkQueues(cache, names, TIERS))
        return {r.queue: (r.depth, r.consumers) for r in await sampler.sample()}

    readings = asyncio.run(with_broker(names, scenario))
    # beta's 2 messages sit unacked in its consumer's window: ready counts 1 + 3 + 0.
    assert readings[names.work_queue("cheap")] == (4, 1)
    assert readings[names.work_queue("standard")] == (4, 0)
    assert readings[names.work_queue("premium")] == (0, 0)
    assert readings[names.tasks] == (1, 0)
    assert not [q for q in readings if q.startswith(f"{names.work}.") and q.count(".") > 2]
    assert set(readings) == set(names.queues())  # one row per queue, none per lane


def _lane_queues(names: Names) -> list[str]:
    return [names.lane_queue("cheap", "acme"), names.lane_queue("cheap", "beta"),
            names.lane_queue("standard", "acme")]


def test_delete_namespace_removes_the_lanes(names: Names, rabbit: Rabbit) -> None:
    _fill(names, rabbit)
    assert all(rabbit.depth(q) is not None for q in _lane_queues(names))
    settings = Settings(namespace=names.ns)
    delete_namespace(settings.amqp_url, settings.redis_url, names.ns)
    for queue in [*_lane_queues(names), names.work_queue("cheap")]:
        assert rabbit.depth(queue) is None, queue  # the passive declare fails: gone
    assert _registered(names, "cheap") == _registered(names, "standard") == set()


def test_topology_delete_command_removes_the_lanes(names: Names, rabbit: Rabbit,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    _fill(names, rabbit)
    assert agentq(["topology", "--delete"]) == 0  # AGENTQ_NAMESPACE is the test's
    assert f"deleted with 3 tenant lanes for namespace '{names.ns}'" in capsys.readouterr().out
    for queue in [*_lane_queues(names), names.work_queue("cheap"), names.tasks]:
        assert rabbit.depth(queue) is None, queue
    assert _registered(names, "cheap") == _registered(names, "standard") == set()


# --- idle lanes in a running pipeline -------------------------------------------------------

LANE_IDLE_S = 2.0
LANE_RETIRE_S = 6.0


@pytest.fixture(scope="module")
def idling(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    with running_pipeline(tmp_path_factory.mktemp("idling"), workers=2,
                          env={"AGENTQ_LANE_IDLE_S": str(LANE_IDLE_S),
                               "AGENTQ_LANE_RETIRE_S": str(LANE_RETIRE_S)}) as running:
        yield running


def test_workers_let_go_of_an_idle_lane_take_it_back_and_retire_it(
        idling: Pipeline) -> None:
    rabbit = Rabbit(AMQP_URL)
    lane = f"{idling.ns}.work.cheap.sleepy"
    try:
        first = idling.submit({"prompt": f"first {uuid.uuid4()}", "tenant": "sleepy",
                               "tier": "cheap"})
        assert idling.wait_done([first], timeout=30)[first]["status"] == "succeeded"
        wait_until(lambda: rabbit.depth(lane) == (0, 2), 5, "both workers to consume it")
        # Nothing published for LANE_IDLE_S: both let go of it (the queue stays).
        wait_until(lambda: rabbit.depth(lane) == (0, 0), 20, "the workers to let go")
        second = idling.submit({"prompt": f"second {uuid.uuid4()}", "tenant": "sleepy",
                                "tier": "cheap"})
        assert idling.wait_done([second], timeout=20)[second]["status"] == "succeeded"
        wait_until(lambda: rabbit.depth(lane) == (0, 2), 1.5, "both workers to take it back")
        # A task that reaches the idle lane without the router (a client publishing to the
        # lane's routing key, a retry that waited longer than the idle time) is swept back.
        wait_until(lambda: rabbit.depth(lane) == (0, 0), 20, "the workers to let go again")
        before = idling.stats()["completed"]
        task = Task(prompt=f"unannounced {uuid.uuid4()}", tenant="sleepy", tier="cheap")
        rabbit.publish(f"{idling.ns}.work", "cheap.sleepy", task.model_dump_json())
        wait_until(lambda: idling.stats()["completed"] > before, 20, "the task to be served")
        assert rabbit.count(lane) == 0
        # Idle for LANE_RETIRE_S: the queue is deleted; the tenant's next task declares it again.
        wait_until(lambda: rabbit.depth(lane) is None, 30, "the lane to be retired")
        third = idling.submit({"prompt": f"third {uuid.uuid4()}", "tenant": "sleepy",
                               "tier": "cheap"})
        assert idling.wait_done([third], timeout=20)[third]["status"] == "succeeded"
        assert rabbit.depth(lane) is not None
    finally:
        rabbit.close()
