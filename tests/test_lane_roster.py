"""The broker's lane roster (services.lanes.roster): lanes that Redis forgot are found
from the broker, so their tasks are not stranded. The compaction rule alone, then against
the real RabbitMQ and Redis in the test's namespace (deleted afterwards, lanes too)."""

from __future__ import annotations

import asyncio
from typing import TypeVar

import aio_pika
import pytest
import redis
from aio_pika.abc import AbstractRobustConnection
from redis.asyncio import Redis

from bench.stack import delete_namespace
from services.common.models import TIERS
from services.common.settings import Settings
from services.common.topology import Names
from services.lanes.directory import LaneDirectory
from services.lanes.registry import LaneRegistry, registered_lanes, registry_keys
from services.lanes.roster import (
    LaneRoster,
    RosterSweep,
    compact,
    roster_lanes,
)
from services.lanes.sweeper import LaneSweeper
from tests.conftest import Rabbit
from tests.lane_helpers import lane_sweeper, with_broker

T = TypeVar("T")
IDLE_S = 600.0


def test_compaction_keeps_one_entry_per_live_lane_in_order() -> None:
    a, b, c, gone = ("cheap", "a"), ("cheap", "b"), ("standard", "c"), ("cheap", "gone")
    plan = compact([a, b, None, a, gone, c, b], {a: True, gone: False})
    assert plan.keep == [a, b, c]  # b and c unasked: kept (unknown is not missing)
    assert plan.drop == [2, 3, 4, 6]  # unreadable, a again, a deleted queue, b again


def test_compaction_of_nothing() -> None:
    plan = compact([], {})
    assert plan.keep == [] and plan.drop == []


# --- against the real broker and cache ------------------------------------------------------

def _roster_sweeper(registry: LaneRegistry, connection: AbstractRobustConnection,
                    names: Names) -> LaneSweeper:
    return lane_sweeper(registry, connection, "worker-1",
                        RosterSweep(connection, names, TIERS).stranded)


def _forget_registry(names: Names) -> None:
    """What a Redis restart without its data does to the lane registry."""
    client = redis.Redis.from_url(Settings(namespace=names.ns).redis_url)
    try:
        client.delete(*registry_keys(names, TIERS))
    finally:
        client.close()


def test_each_publisher_enters_a_lane_in_the_roster_once(names: Names) -> None:
    async def scenario(connection: AbstractRobustConnection, cache: Redis) -> list[object]:
        registry = LaneRegistry(cache, names, IDLE_S)
        first = LaneDirectory(await connection.channel(), registry)
        for _ in range(3):
            await first.reserve("cheap", "acme", 0.0)  # registers each time
        await first.route("standard", "acme")
        # Another router enters a lane it uses once too, though Redis lists it: a lane
        # registered before the roster existed (an upgrade) gets its entry that way.
        await LaneDirectory(await connection.channel(), registry).reserve("cheap", "acme", 0.0)
        async with LaneRoster(names).reading(connection) as read:
            return list(read.entries)

    entries = asyncio.run(with_broker(names, scenario))
    assert entries == [("cheap", "acme"), ("standard", "acme"), ("cheap", "acme")]


def test_lanes_redis_forgot_are_found_from_the_broker_and_woken(names: Names,
                                                                 rabbit: Rabbit) -> None:
    async def register(connection: AbstractRobustConnection, cache: Redis) -> None:
        directory = LaneDirectory(await connection.channel(), LaneRegistry(cache, names, IDLE_S))
        for tier, tenant in (("cheap", "acme"), ("cheap", "empty"), ("standard", "acme")):
            await directory.route(tier, tenant)

    asyncio.run(with_broker(names, register))
    for route, count in (("cheap.acme", 3), ("standard.acme", 2)):
        for n in range(count):
            rabbit.publish(names.work, route, f'{{"n": {n}}}')
    _forget_registry(names)

    async def sweep(connection: AbstractRobustConnection, cache: Redis
                    ) -> tuple[list[tuple[str, str]], list[tuple[str, str]], int]:
        registry = LaneRegistry(cache, names, IDLE_S)
        assert await registered_lanes(cache, names, TIERS) == []
        before = await registry.version(TIERS)
        woken = await _roster_sweeper(registry, connection, names).sweep()
        changed = int(await registry.version(TIERS) != before)
        return woken, await registered_lanes(cache, names, TIERS), changed

    woken, registered, changed = asyncio.run(with_broker(names, sweep))
    # Both lanes that hold tasks are registered again (so every worker's watcher consumes
    # them, as the version changed); the empty one waits for its next task.
    assert sorted(woken) == [("cheap", "acme"), ("standard", "acme")]
    assert registered == [("cheap", "acme"), ("standard", "acme")]
    assert changed == 1
    # The roster is left whole for the next loss.
    assert asyncio.run(with_broker(names, lambda c, _: roster_lanes(c, names))) == {
        ("cheap", "acme"), ("cheap", "empty"), ("standard", "acme")}
    assert rabbit.depth(names.lane_queue("cheap", "acme")) == (3, 0)  # nothing taken


def test_the_sweep_removes_duplicates_and_entries_of_deleted_lanes(names: Names,
                                                                    rabbit: Rabbit) -> None:
    async def scenario(connection: AbstractRobustConnection, cache: Redis
                       ) -> tuple[int, list[tuple[str, str] | None]]:
        registry = LaneRegistry(cache, names, IDLE_S)
        # Three routers' restarts, each entering the lanes again; then one lane deleted.
        for _ in range(3):
            directory = LaneDirectory(await connection.channel(), registry)
            await directory.route("cheap", "acme")
            await directory.route("cheap", "old")
            _forget_registry(names)
        channel = await connection.channel()
        await channel.queue_delete(names.lane_queue("cheap", "old"))
        await channel.close()
        channel = await connection.channel()
        await channel.default_exchange.publish(aio_pika.Message(b"not json"),
                                               routing_key=names.lane_roster)
        await channel.close()
        before = await _roster_size(connection, names)
        await _roster_sweeper(registry, connection, names).sweep()
        async with LaneRoster(names).reading(connection) as read:
            return before, list(read.entries)

    before, after = asyncio.run(with_broker(names, scenario))
    assert before == 7
    assert after == [("cheap", "acme")]


async def _roster_size(connection: AbstractRobustConnection, names: Names) -> int:
    async with LaneRoster(names).reading(connection) as read:
        return len(read.entries)


def test_an_unreadable_roster_does_not_stop_the_registry_sweep(names: Names) -> None:
    async def scenario(connection: AbstractRobustConnection, cache: Redis) -> list[object]:
        registry = LaneRegistry(cache, names, IDLE_S)

        async def broken(_registered: object) -> list[tuple[str, str]]:
            raise aio_pika.exceptions.AMQPConnectionError("broker went away")

        sweeper = _roster_sweeper(registry, connection, names)
        sweeper.stranded = broken
        await registry.touch("cheap", "untimed")
        await cache.zrem(names.lanes_seen_key("cheap"), "untimed")
        with pytest.raises(aio_pika.exceptions.AMQPConnectionError):
            await sweeper.sweep_now()
        view = await registry.view(TIERS)
        return [view.seen[("cheap", "untimed")]]

    (seen,) = asyncio.run(with_broker(names, scenario))
    assert seen is not None  # adopted before the roster was read


def test_delete_namespace_finds_lanes_from_the_roster_alone(names: Names,
                                                            rabbit: Rabbit) -> None:
    async def register(connection: AbstractRobustConnection, cache: Redis) -> None:
        directory = LaneDirectory(await connection.channel(), LaneRegistry(cache, names, IDLE_S))
        await directory.route("premium", "acme")

    asyncio.run(with_broker(names, register))
    _forget_registry(names)
    lane = names.lane_queue("premium", "acme")
    assert rabbit.depth(lane) == (0, 0)
    settings = Settings(namespace=names.ns)
    delete_namespace(settings.amqp_url, settings.redis_url, names.ns)
    assert rabbit.depth(lane) is None
    assert rabbit.depth(names.lane_roster) is None
