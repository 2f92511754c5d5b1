"""Tenant lanes: one work queue per (tier, tenant), so one tenant's flood waits in its own.

With one FIFO queue per tier, a tenant that floods it stands in front of everyone: the
workers must take its tasks to reach the others'. With a lane per tenant every worker
consumes every awake lane of its tiers, each with the worker's prefetch, so each tenant's
next tasks are always in hand and the shared limiter decides who goes first. The
tier's own queue (`<ns>.work.<tier>`) stays bound and consumed: it takes work published by
tier alone, and the router's tasks whenever the lane registry (Redis) is unreachable.

Which lanes exist, and when each was last published to, is kept in Redis (`LaneRegistry`),
written by whoever publishes to a lane (the router; a worker escalating a task) and polled
by the workers (services.worker.lanes), which stop consuming idle lanes
(services.common.lane_idle).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable

from aio_pika.abc import AbstractChannel
from aio_pika.exceptions import AMQPError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.common.lane_idle import Lane, LaneView
from services.common.topology import Names, declare_lane, lane_route

log = logging.getLogger(__name__)
# A publisher re-registers a lane it publishes to this often: that keeps the lane awake, and
# rebuilds a registry that Redis lost (a restart without persistence) with each tenant's next
# task. Far below any sensible idle time (AGENTQ_LANE_IDLE_S).
REGISTER_EVERY_S = 30.0

# KEYS: registry set, seen zset, version counter. ARGV: tenant, idle_s.
# Registers the lane, records now (Redis's clock) as its last use, and bumps the version if
# the lane is new or was idle, so that every worker wakes it at once. Returns now.
_TOUCH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local seen = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1]))
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], 'GT', string.format('%.6f', now), ARGV[1])
if seen == nil or seen < now - tonumber(ARGV[2]) then
  redis.call('INCR', KEYS[3])
end
return string.format('%.6f', now)
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class LaneRegistry:
    """The lanes of a namespace in Redis: a set per tier, when each was last published to,
    and a version that changes whenever a lane is created or wakes."""

    def __init__(self, redis: Redis, names: Names, idle_s: float) -> None:
        self.redis = redis
        self.names = names
        self.idle_s = idle_s
        self._touch = redis.register_script(_TOUCH)

    async def touch(self, tier: str, tenant: str) -> float:
        """Register the lane and record its use now; return Redis's time."""
        keys = [self.names.lanes_key(tier), self.names.lanes_seen_key(tier),
                self.names.lanes_version_key]
        return float(_text(await self._touch(keys=keys, args=[tenant, repr(self.idle_s)])))

    async def version(self, tiers: Iterable[str]) -> tuple[int, ...]:
        """Return what changes when a lane of `tiers` is created or wakes (one round trip)."""
        tiers = list(tiers)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(self.names.lanes_version_key)
            for tier in tiers:
                pipe.scard(self.names.lanes_key(tier))
            version, *sizes = await pipe.execute()
        return (int(version or 0), *(int(n) for n in sizes))

    async def view(self, tiers: Iterable[str]) -> LaneView:
        """Read every lane of `tiers` and when it was last used, with Redis's time."""
        tiers = list(tiers)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.time()
            for tier in tiers:
                pipe.smembers(self.names.lanes_key(tier))
                pipe.zrange(self.names.lanes_seen_key(tier), 0, -1, withscores=True)
            (seconds, micros), *replies = await pipe.execute()
        seen: dict[Lane, float | None] = {}
        for i, tier in enumerate(tiers):
            members, scored = replies[2 * i], replies[2 * i + 1]
            at = {_text(tenant): float(score) for tenant, score in scored}
            for tenant in map(_text, members):
                seen[(tier, tenant)] = at.get(tenant)
        return LaneView(int(seconds) + int(micros) / 1_000_000, seen)

    async def claim(self, job: str, owner: str, seconds: float) -> bool:
        """Take a namespace-wide job for `seconds` unless another process has it."""
        key = self.names.redis_key("lanes", "job", job)
        return bool(await self.redis.set(key, owner, nx=True, px=max(1, int(seconds * 1000))))



class LaneDirectory:
    """Say where to publish a tenant's work: its lane, declared and registered on first use."""

    def __init__(self, channel: AbstractChannel, registry: LaneRegistry) -> None:
        self.channel = channel
        self.registry = registry
        self._registered: dict[Lane, float] = {}

    async def route(self, tier: str, tenant: str) -> str:
        """Return the routing key for `tenant`'s work in `tier`: its lane, or the tier's queue
        while the lane cannot be declared and registered."""
        key = (tier, tenant)
        now = time.monotonic()
        # Often enough that a lane in use never looks idle between two registrations.
        every = min(REGISTER_EVERY_S, self.registry.idle_s / 4)
        if now - self._registered.get(key, -math.inf) < every:
            return lane_route(tier, tenant)
        try:
            if key not in self._registered:
                await declare_lane(self.channel, self.registry.names, tier, tenant)
            await self.registry.touch(tier, tenant)
        except (RedisError, AMQPError, OSError) as exc:
            if key in self._registered:  # declared and registered before: workers know it
                return lane_route(tier, tenant)
            log.warning("lane %s/%s not ready (%r): publishing to the tier's queue",
                        tier, tenant, exc)
            return tier
        self._registered[key] = now
        return lane_route(tier, tenant)


def registry_keys(names: Names, tiers: Iterable[str]) -> list[str]:
    """Return the Redis keys of a namespace's lane registry (to delete it with the namespace)."""
    return [*(key for tier in tiers for key in (names.lanes_key(tier), names.lanes_seen_key(tier))),
            names.lanes_version_key]


async def registered_lanes(redis: Redis, names: Names,
                           tiers: Iterable[str]) -> list[Lane]:
    """Return every registered (tier, tenant) lane of `tiers`."""
    tiers = list(tiers)
    async with redis.pipeline(transaction=False) as pipe:
        for tier in tiers:
            pipe.smembers(names.lanes_key(tier))
        members = await pipe.execute()
    return sorted((tier, _text(tenant)) for tier, tenants in zip(tiers, members, strict=True)
                  for tenant in tenants)
