"""Helpers of the lane tests: a broker connection and a Redis client of the test's
namespace, and a sweeper wired as a worker wires it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import aio_pika
from aio_pika.abc import AbstractRobustConnection
from redis.asyncio import Redis

from services.common.models import TIERS
from services.common.settings import Settings
from services.common.topology import Names
from services.lanes.registry import LaneRegistry
from services.lanes.sweeper import BrokerQueues, LaneSweeper, StrandedFinder

T = TypeVar("T")


async def with_broker(names: Names, action: Callable[[AbstractRobustConnection, Redis],
                                                      Awaitable[T]]) -> T:
    """Run `action` with a broker connection and a Redis client of the test's settings."""
    settings = Settings(namespace=names.ns)
    connection = await aio_pika.connect_robust(settings.amqp_url)
    cache = Redis.from_url(settings.redis_url)
    try:
        async with connection:
            return await action(connection, cache)
    finally:
        await cache.aclose()


def lane_sweeper(registry: LaneRegistry, connection: AbstractRobustConnection, owner: str,
                 stranded: StrandedFinder | None = None) -> LaneSweeper:
    """A sweeper that reads depths and deletes queues on `connection`, as a worker does."""
    return LaneSweeper(registry, TIERS, BrokerQueues(connection), owner, stranded)
