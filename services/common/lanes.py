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
(services.common.lane_idle). The broker keeps its own list too (services.common.lane_roster),
from which the sweep recovers lanes that Redis lost.
"""

from __future__ import annotations

import logging
import math
import re
import time
import uuid
from collections.abc import Iterable
from typing import Any, Literal, cast

from aio_pika.abc import AbstractChannel
from aio_pika.exceptions import AMQPError
from pydantic import BaseModel
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.common.amqp import Broker, PublishFailed
from services.common.lane_idle import Lane, LaneView
from services.common.lane_roster import LaneRoster
from services.common.models import Task
from services.common.topology import DELAY_HEADER, Names, declare_lane, lane_route, retry_level

log = logging.getLogger(__name__)
# A publisher re-registers a lane it publishes to at most this often: that keeps the lane
# awake, and rebuilds a registry that Redis lost (a restart without persistence) with each
# tenant's next task.
REGISTER_EVERY_S = 30.0
# What AMQP (and pamqp, which refuses anything else) accepts as a queue name.
_QUEUE_NAME = re.compile(r"[A-Za-z0-9\-_.:]{1,255}")


def can_name_a_queue(name: str) -> bool:
    return _QUEUE_NAME.fullmatch(name) is not None


def refresh_s(idle_s: float) -> float:
    """How often publishers register a lane in use, workers look for idle lanes, and the sweep
    runs: often enough that a lane in use never looks idle, and a quarter of the idle time at
    most."""
    return min(REGISTER_EVERY_S, idle_s / 4)

# KEYS: registry set, seen zset, version counter, the lane's retiring mark. ARGV: tenant,
# idle_s, ahead_s. Unless the lane is being retired ('busy'), registers it, records its use
# at now + ahead_s (Redis's clock; ahead: work that reaches the lane only then, a retry), and
# bumps the version if the lane is new or was idle, so that every worker wakes it at once.
# Returns 'new' (it was not registered: declare its queue), 'ok' or 'busy'.
_TOUCH = """
if redis.call('EXISTS', KEYS[4]) == 1 then
  return 'busy'
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local seen = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1]))
local added = redis.call('SADD', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], 'GT', string.format('%.6f', now + tonumber(ARGV[3])), ARGV[1])
if seen == nil or seen < now - tonumber(ARGV[2]) then
  redis.call('INCR', KEYS[3])
end
if added == 1 then
  return 'new'
end
return 'ok'
"""

# KEYS: seen zset, the lane's retiring mark. ARGV: tenant, retire_s, mark_ms, token.
# Marks a lane nothing was published to for retire_s as being retired (publishers then use
# the tier's queue). Returns 1 if it did.
_BEGIN_RETIRING = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local seen = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]))
if seen == nil or seen >= now - tonumber(ARGV[2]) or redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[3])
return 1
"""

# KEYS: registry set, seen zset, the lane's retiring mark. ARGV: tenant, token, deleted,
# keep_mark. Ends a retirement (if the mark is still this one's): a deleted lane leaves the
# registry; the mark goes, unless kept to run out (a delete that may still be under way).
_END_RETIRING = """
if redis.call('GET', KEYS[3]) ~= ARGV[2] then
  return 0
end
if ARGV[3] == '1' then
  redis.call('SREM', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
end
if ARGV[4] ~= '1' then
  redis.call('DEL', KEYS[3])
end
return 1
"""
# A retirement (a depth read and a delete) must end well within this: a mark that expired
# lets publishers back into a queue being deleted.
RETIRING_MARK_S = 60.0
RETIRE_WITHIN_S = RETIRING_MARK_S / 4

Touched = Literal["new", "ok", "busy"]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class LaneRegistry:
    """The lanes of a namespace in Redis: a set per tier, when each was last published to,
    and a version that changes whenever a lane is created or wakes."""

    def __init__(self, redis: Redis, names: Names, idle_s: float,
                 retire_s: float = math.inf) -> None:
        self.redis = redis
        self.names = names
        self.idle_s = idle_s
        self.retire_s = retire_s  # idle this long, a lane's queue is deleted
        self._touch = redis.register_script(_TOUCH)
        self._begin = redis.register_script(_BEGIN_RETIRING)
        self._end = redis.register_script(_END_RETIRING)

    def _retiring_key(self, tier: str, tenant: str) -> str:
        return self.names.redis_key("lanes", tier, "retiring", tenant)

    async def touch(self, tier: str, tenant: str, ahead_s: float = 0.0) -> Touched:
        """Register the lane and record its use now (or `ahead_s` from now), unless it is
        being retired ('busy'); 'new' if it was not registered."""
        keys = [self.names.lanes_key(tier), self.names.lanes_seen_key(tier),
                self.names.lanes_version_key, self._retiring_key(tier, tenant)]
        args = [tenant, repr(self.idle_s), repr(max(0.0, ahead_s))]
        return cast(Touched, _text(await self._touch(keys=keys, args=args)))

    async def begin_retiring(self, tier: str, tenant: str) -> str | None:
        """Mark a lane idle for `retire_s` as being retired; return the retirement's token,
        None if the lane was used since (or is being retired already)."""
        if not math.isfinite(self.retire_s):
            return None
        token = uuid.uuid4().hex
        keys = [self.names.lanes_seen_key(tier), self._retiring_key(tier, tenant)]
        args: list[str | int] = [tenant, repr(self.retire_s), int(RETIRING_MARK_S * 1000),
                                 token]
        return token if await self._begin(keys=keys, args=args) else None

    async def end_retiring(self, tier: str, tenant: str, token: str, deleted: bool,
                           keep_mark: bool = False) -> None:
        """Unregister the lane if its queue was `deleted`; clear the mark, or with `keep_mark`
        leave it to expire (publishers keep off a queue whose delete may still land)."""
        keys = [self.names.lanes_key(tier), self.names.lanes_seen_key(tier),
                self._retiring_key(tier, tenant)]
        await self._end(keys=keys, args=[tenant, token, "1" if deleted else "0",
                                         "1" if keep_mark else "0"])

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
        self.roster = LaneRoster(registry.names)
        self._registered: dict[Lane, float] = {}
        self._announced: set[Lane] = set()
        self._roster_declared = False

    async def route(self, tier: str, tenant: str) -> str:
        """Return the routing key for `tenant`'s work in `tier`: its lane, or the tier's queue
        while the lane cannot be declared and registered, or is being retired."""
        registered = self._registered.get((tier, tenant), -math.inf)
        if time.monotonic() - registered < refresh_s(self.registry.idle_s):
            return lane_route(tier, tenant)
        return await self._register(tier, tenant, 0.0)

    async def reserve(self, tier: str, tenant: str, ahead_s: float) -> str:
        """Return where to send work that reaches its lane only in `ahead_s` (a retry, a
        budget hold): the lane, with its use recorded then so that it is not retired before;
        the tier's queue if that cannot be recorded."""
        return await self._register(tier, tenant, ahead_s)

    async def _register(self, tier: str, tenant: str, ahead_s: float) -> str:
        if not can_name_a_queue(self.registry.names.lane_queue(tier, tenant)):
            return tier  # a tenant `\w` admits that AMQP does not (é, 漢): the tier's queue
        key = (tier, tenant)
        now = time.monotonic()
        registered = self._registered.get(key, -math.inf)
        try:
            touched = await self.registry.touch(tier, tenant, ahead_s)
            if touched == "busy":  # its queue is being deleted: the tier's queue takes the work
                return tier
            # Every registration declares (idempotent, once per refresh_s): work that lands
            # later (a retry) is dead-lettered to the lane, dropped if its queue were missing.
            await declare_lane(self.channel, self.registry.names, tier, tenant)
            if touched == "new" or key not in self._announced:
                await self._announce(tier, tenant)
        except (RedisError, AMQPError, OSError, RuntimeError) as exc:
            # Registered lately, so not retired since (that takes retire_s of disuse).
            if not ahead_s and now - registered < self.registry.retire_s / 2:
                return lane_route(tier, tenant)
            log.warning("lane %s/%s not ready (%r): publishing to the tier's queue",
                        tier, tenant, exc)
            return tier
        self._registered[key] = now
        return lane_route(tier, tenant)

    async def _announce(self, tier: str, tenant: str) -> None:
        # The roster is how a lane is found once Redis has forgotten it; a lane it misses is
        # announced at its next registration, so this failing must not hold up the task.
        try:
            if not self._roster_declared:
                await self.roster.declare(self.channel)
                self._roster_declared = True
            await self.roster.announce(self.channel, tier, tenant)
        except (AMQPError, OSError, RuntimeError) as exc:
            log.warning("lane %s/%s not entered in the roster (%r): tried again later", tier,
                        tenant, exc)
            return
        self._announced.add((tier, tenant))

    def forget(self, tier: str, tenant: str) -> None:
        """Declare and register the lane again before its next use (its queue went away)."""
        self._registered.pop((tier, tenant), None)

    async def publish(self, bus: Broker, tier: str, tenant: str, body: BaseModel,
                      **kwargs: Any) -> None:
        """Publish work for `tenant` in `tier` to its lane; to the tier's queue if the lane's
        queue turned out to be gone (deleted under a stale registration)."""
        route = await self.route(tier, tenant)
        try:
            await bus.publish(bus.names.work, route, body, **kwargs)
        except PublishFailed:
            if route == tier:
                raise
            self.forget(tier, tenant)
            log.warning("lane %s/%s unroutable: publishing to the tier's queue", tier, tenant)
            await bus.publish(bus.names.work, tier, body, **kwargs)

    async def publish_later(self, bus: Broker, tier: str, task: Task, headers: dict[str, Any],
                            delay_ms: float) -> None:
        """Send a task back to the tail of its lane after about `delay_ms` (a retry, a budget
        hold), through the delay queue of that length; the lane's use is recorded for when
        the task lands back, so that the lane is not retired meanwhile."""
        level = retry_level(delay_ms)
        wait_ms = max(1.0, min(delay_ms, level))
        route = await self.reserve(tier, task.tenant, wait_ms / 1000)
        await bus.publish(bus.names.retry, route, task, priority=task.priority,
                          message_id=task.id, headers={**headers, DELAY_HEADER: level},
                          expiration=wait_ms / 1000)


def registry_keys(names: Names, tiers: Iterable[str]) -> list[str]:
    """Return the Redis keys of a namespace's lane registry (to delete it with the namespace;
    retiring marks expire by themselves)."""
    return [*(key for tier in tiers for key in (names.lanes_key(tier), names.lanes_seen_key(tier))),
            names.lanes_version_key, names.redis_key("lanes", "job", "sweep")]


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
