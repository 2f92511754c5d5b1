"""Tenant lanes: one work queue per (tier, tenant), so one tenant's flood waits in its own.

With one FIFO queue per tier, a tenant that floods it stands in front of everyone: the
workers must take its tasks to reach the others'. With a lane per tenant every worker
consumes every lane of its tiers, each with the worker's prefetch, so each tenant's next
tasks are always in hand and the shared limiter decides who goes first. The
tier's own queue (`<ns>.work.<tier>`) stays bound and consumed: it takes work published by
tier alone, and the router's tasks whenever the lane registry (Redis) is unreachable.

Which lanes exist is kept in Redis, a set of tenants per tier, written by whoever declares a
lane (the router; a worker escalating a task) and polled by the workers.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable

from aio_pika.abc import AbstractChannel
from aio_pika.exceptions import AMQPError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.common.topology import Names, declare_lane, lane_route

log = logging.getLogger(__name__)
# A router re-registers a lane it publishes to this often, so a registry that Redis lost
# (a restart without persistence) is rebuilt by the next task of each tenant.
REGISTER_EVERY_S = 30.0
WATCH_INTERVAL_S = 0.25


class LaneDirectory:
    """Say where to publish a tenant's work: its lane, declared and registered on first use."""

    def __init__(self, channel: AbstractChannel, redis: Redis, names: Names) -> None:
        self.channel = channel
        self.redis = redis
        self.names = names
        self._registered: dict[tuple[str, str], float] = {}

    async def route(self, tier: str, tenant: str) -> str:
        """Return the routing key for `tenant`'s work in `tier`: its lane, or the tier's queue
        while the lane cannot be declared and registered."""
        key = (tier, tenant)
        now = time.monotonic()
        if now - self._registered.get(key, -math.inf) < REGISTER_EVERY_S:
            return lane_route(tier, tenant)
        try:
            if key not in self._registered:
                await declare_lane(self.channel, self.names, tier, tenant)
            await self.redis.sadd(self.names.lanes_key(tier), tenant)
        except (RedisError, AMQPError, OSError) as exc:
            if key in self._registered:  # declared and registered before: workers know it
                return lane_route(tier, tenant)
            log.warning("lane %s/%s not ready (%r): publishing to the tier's queue",
                        tier, tenant, exc)
            return tier
        self._registered[key] = now
        return lane_route(tier, tenant)


async def registered_lanes(redis: Redis, names: Names,
                           tiers: Iterable[str]) -> list[tuple[str, str]]:
    """Return every registered (tier, tenant) lane of `tiers`."""
    tiers = list(tiers)
    async with redis.pipeline(transaction=False) as pipe:
        for tier in tiers:
            pipe.smembers(names.lanes_key(tier))
        members = await pipe.execute()
    return sorted((tier, _text(tenant)) for tier, tenants in zip(tiers, members, strict=True)
                  for tenant in tenants)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class LaneWatcher:
    """Poll the registry and hand each lane not seen before to `on_new`, once."""

    def __init__(self, redis: Redis, names: Names, tiers: Iterable[str],
                 on_new: Callable[[str, str], Awaitable[None]],
                 interval_s: float = WATCH_INTERVAL_S) -> None:
        self.redis = redis
        self.names = names
        self.tiers = list(tiers)
        self.on_new = on_new
        self.interval_s = interval_s
        self.known: set[tuple[str, str]] = set()
        self._sizes: list[int] = []

    async def poll(self) -> None:
        """Look once; a registry that did not grow is not read in full."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for tier in self.tiers:
                pipe.scard(self.names.lanes_key(tier))
            sizes = [int(n) for n in await pipe.execute()]
        if sizes == self._sizes:
            return
        for lane in await registered_lanes(self.redis, self.names, self.tiers):
            if lane not in self.known:
                await self.on_new(*lane)
                self.known.add(lane)
        self._sizes = sizes

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until `stop`; an unreachable registry keeps the lanes already consumed."""
        warned = False
        while not stop.is_set():
            try:
                await self.poll()
                warned = False
            except (RedisError, AMQPError, OSError) as exc:
                if not warned:
                    log.warning("lane registry unreadable (%r); consuming the %d known lanes",
                                exc, len(self.known))
                    warned = True
            try:
                await asyncio.wait_for(stop.wait(), self.interval_s)
            except TimeoutError:
                pass
