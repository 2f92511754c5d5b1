"""The lane registry: which lanes of a namespace exist, and when each was last published to.

Kept in Redis (a set per tier, a sorted set of last uses, a version), written by whoever
publishes to a lane (services.lanes.directory) and polled by the workers
(services.lanes.watcher). Times are Redis's own, so every process judges idleness by one
clock. A lane being retired carries a mark that sends publishers to the tier's queue.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable
from typing import Literal, cast

from redis.asyncio import Redis

from services.common.topology import Names
from services.lanes.plans import Lane, LaneView

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
