"""Run the limiter's Lua scripts on Redis: name the keys, pass the arguments, read the replies."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, cast

from redis.asyncio import Redis

from services.common.topology import Names
from services.worker.limiter.admission import Outcome, PoolParams, Reason, Request

_PACKAGE = resources.files("services.worker.limiter")
LIMITER_LUA = _PACKAGE.joinpath("limiter.lua").read_text()
HEARTBEAT_LUA = _PACKAGE.joinpath("heartbeat.lua").read_text()


@dataclass(frozen=True)
class PoolKeys:
    """The Redis keys of one pool, in the order the script expects them."""

    requests: str
    tokens: str
    pause: str  # key part "hold": the name running workers share
    vt: str
    weights: str
    active: str

    @classmethod
    def of(cls, names: Names, pool: str) -> PoolKeys:
        # The braces make every key of a pool hash to one slot, as a Redis Cluster requires.
        tag = "{" + pool + "}"
        return cls(*(names.redis_key("limiter", tag, part)
                     for part in ("req", "tok", "hold", "vt", "weights", "active")))

    def all(self) -> list[str]:
        return [self.requests, self.tokens, self.pause, self.vt, self.weights, self.active]


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

    async def true_up(self, pool: str, tpm: float, burst_s: float, delta: float, tenant: str,
                     w_eff: float) -> float | None:
        """Debit (or credit back, if negative) tokens; return the tokens level after."""
        reply = await self._run(pool, ("true_up", _num(tpm), _num(burst_s), _num(delta), tenant,
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

    async def pause(self, pool: str, ms: int) -> int:
        """Pause the pool for `ms` unless it already is for longer; return the pause in ms."""
        return int(await self._run(pool, ("pause", max(1, ms))))

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
