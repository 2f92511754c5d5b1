"""Run the limiter's Lua scripts on Redis: name the keys, pass the arguments, read the replies."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, cast

from redis.asyncio import Redis

from services.common.config import AgentqConfig
from services.common.topology import Names
from services.worker.limiter.admission import Outcome, PoolParams, Reason, Request
from services.worker.limiter.pools import model_pool, pools_from_config

log = logging.getLogger(__name__)
_PACKAGE = resources.files("services.worker.limiter")
LIMITER_LUA = _PACKAGE.joinpath("limiter.lua").read_text()
HEARTBEAT_LUA = _PACKAGE.joinpath("heartbeat.lua").read_text()


@dataclass(frozen=True)
class PoolKeys:
    """The Redis keys of one pool, in the order the script expects them."""

    requests: str
    tokens: str
    hold: str
    vt: str
    weights: str
    active: str
    backlog: str  # tasks queued per tenant (hash)
    queued: str  # tenants with queued tasks (zset: tenant -> fresh until)

    @classmethod
    def of(cls, names: Names, pool: str) -> PoolKeys:
        # The braces make every key of a pool hash to one slot, as a Redis Cluster requires.
        tag = "{" + pool + "}"
        return cls(*(names.redis_key("limiter", tag, part)
                     for part in ("req", "tok", "hold", "vt", "weights", "active", "backlog",
                                  "queued")))

    def all(self) -> list[str]:
        return [self.requests, self.tokens, self.hold, self.vt, self.weights, self.active,
                self.backlog, self.queued]


def workers_key(names: Names) -> str:
    """Name the sorted set of live workers' heartbeats."""
    return names.redis_key("workers")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _float(value: Any) -> float | None:
    text = _text(value)
    return float(text) if text else None


def _num(value: float) -> str:
    return repr(float(value))  # round-trips exactly through Lua's tonumber


@lru_cache(maxsize=256)
def _pool_args(params: PoolParams, state_ttl_ms: int) -> tuple[list[str], list[str]]:
    """Return a pool's fixed acquire arguments, before and after the per-call ones."""
    fair = params.fair
    return (["acquire", _num(params.rpm), _num(params.tpm), _num(params.burst_s)],
            [_num(fair.window), _num(fair.grace_s), _num(fair.min_wait_s),
             _num(fair.max_wait_s), str(state_ttl_ms), _num(params.jitter)])


class RedisPools:
    """The limiter's calls to Redis; every one is a single atomic script run (EVALSHA)."""

    def __init__(self, redis: Redis, names: Names) -> None:
        self._redis = redis
        self._names = names
        self._limiter = redis.register_script(LIMITER_LUA)
        self._heartbeat = redis.register_script(HEARTBEAT_LUA)
        self._keys: dict[str, PoolKeys] = {}

    def keys(self, pool: str) -> PoolKeys:
        """Return (and remember) the keys of a pool."""
        keys = self._keys.get(pool)
        if keys is None:
            keys = self._keys[pool] = PoolKeys.of(self._names, pool)
        return keys

    async def _run(self, pool: str, args: Sequence[str | float | int]) -> Any:
        return await self._limiter(keys=self.keys(pool).all(), args=list(args))

    async def acquire(self, pool: str, params: PoolParams, req: Request,
                      state_ttl_ms: int) -> tuple[Outcome, float]:
        """Run one acquire step; return its outcome and the Redis time it was decided at."""
        head, tail = _pool_args(params, state_ttl_ms)
        reply = await self._run(pool, (*head, _num(req.cost), req.tenant, _num(req.weight),
                                       _num(req.min_share), *tail, _num(req.contenders),
                                       _num(req.u)))
        granted, wait_ms, req_level, tok_level, reason, now, w_eff, vt = reply
        outcome = Outcome(granted=int(granted) == 1, wait_s=float(_text(wait_ms)) / 1000,
                          reason=cast(Reason, _text(reason)), requests_level=_float(req_level),
                          tokens_level=_float(tok_level), w_eff=_float(w_eff) or req.weight,
                          vt=_float(vt) or 0.0)
        return outcome, float(_text(now))

    async def settle(self, pool: str, tpm: float, burst_s: float, delta: float, tenant: str,
                     w_eff: float) -> float | None:
        """Debit (or credit back, if negative) tokens; return the tokens level after."""
        reply = await self._run(pool, ("settle", _num(tpm), _num(burst_s), _num(delta), tenant,
                                       _num(w_eff)))
        return _float(reply[0])

    async def sync(self, pool: str, params: PoolParams, remaining_requests: float | None,
                   remaining_tokens: float | None) -> tuple[float | None, float | None]:
        """Lower the pool's buckets to what remains; return both levels after."""
        reply = await self._run(pool, (
            "sync", _num(params.rpm), _num(params.tpm), _num(params.burst_s),
            "" if remaining_requests is None else _num(remaining_requests),
            "" if remaining_tokens is None else _num(remaining_tokens)))
        return _float(reply[0]), _float(reply[1])

    async def seed(self, pool: str, params: PoolParams, requests: float | None,
                   tokens: float | None) -> tuple[float | None, float | None]:
        """Write levels into the pool's buckets that Redis lost; return both levels after."""
        reply = await self._run(pool, (
            "seed", _num(params.rpm), _num(params.tpm), _num(params.burst_s),
            "" if requests is None else _num(requests), "" if tokens is None else _num(tokens)))
        return _float(reply[0]), _float(reply[1])

    async def hold(self, pool: str, ms: int) -> int:
        """Put the pool on hold for `ms` unless it already is for longer; return the hold."""
        return int(await self._run(pool, ("hold", max(1, ms))))

    async def backlog(self, pool: str, tenant: str, delta: int, ttl_ms: int) -> int:
        """Count a task of the tenant queued (+1) or finished for good (-1); return the count."""
        return int(await self._run(pool, ("backlog", tenant, str(int(delta)), str(ttl_ms))))

    async def run_id(self) -> str:
        """Return the Redis server's run id, which changes when it restarts (losing state)."""
        info = await self._redis.info("server")
        return _text(info.get("run_id", ""))

    async def ping(self) -> bool:
        return bool(await self._redis.ping())

    async def heartbeat(self, member: str, ttl_ms: int, leave: bool = False) -> int:
        """Refresh (or remove) this worker's heartbeat; return the live workers."""
        return int(await self._heartbeat(keys=[workers_key(self._names)],
                                         args=[member, ttl_ms, "leave" if leave else "beat"]))


BACKLOG_TTL_S = 60.0  # queued work not touched for this long stops counting (crash safety)


def backlog_pools(config: AgentqConfig, tier: str) -> list[str]:
    """Return the limited pools a tier's tasks draw from (its first model's, as it usually runs)."""
    models = config.tiers[tier].models if tier in config.tiers else None
    if not models:
        return []
    limited = pools_from_config(config)
    entry = models[0]
    return [name for name in (entry.provider, model_pool(entry.provider, entry.model))
            if name in limited and (limited[name].rpm or limited[name].tpm)]


class Backlog:
    """Tell the limiter which tenants have tasks queued, so that the fair shares count them
    as backlogged before their tasks reach a worker (a flood ahead of them in the FIFO queue
    is then deferred to its tail). The router counts a task in, the worker counts it out when
    it ends for good; neither must fail a task over it."""

    def __init__(self, redis: Redis, names: Names, config: AgentqConfig,
                 ttl_s: float = BACKLOG_TTL_S) -> None:
        self._pools = RedisPools(redis, names)
        self._config = config
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._by_tier: dict[str, list[str]] = {}

    def pools(self, tier: str) -> list[str]:
        pools = self._by_tier.get(tier)
        if pools is None:
            pools = self._by_tier[tier] = backlog_pools(self._config, tier)
        return pools

    async def _add(self, tenant: str, tier: str, delta: int) -> None:
        for pool in self.pools(tier):
            try:
                await self._pools.backlog(pool, tenant, delta, self._ttl_ms)
            except Exception:  # the TTL bounds what a lost update costs
                log.debug("backlog of %s in %s not updated", tenant, pool, exc_info=True)

    async def queued(self, tenant: str, tier: str) -> None:
        """Count one task of `tenant` queued for `tier`."""
        await self._add(tenant, tier, 1)

    async def done(self, tenant: str, tier: str) -> None:
        """Count one task of `tenant` routed to `tier` as finished (never below 0)."""
        await self._add(tenant, tier, -1)
