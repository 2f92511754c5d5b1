"""The worker's shared rate limiter: wait for a pool's capacity, true up, pause on 429s."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

from redis.asyncio import Redis

from services.common.redis_extras import REDIS_DOWN
from services.common.topology import Names
from services.worker.limiter import bucket
from services.worker.limiter.admission import Outcome, PoolParams, Request, spread
from services.worker.limiter.bucket import BucketState
from services.worker.limiter.fairness import FairParams
from services.worker.limiter.headers import remaining_from_headers, retry_after_from_headers
from services.worker.limiter.link import RedisLink, SlowRedis
from services.worker.limiter.local import LocalBuckets
from services.worker.limiter.pools import LimiterOptions, PoolLimits, TenantShare, UnknownPool
from services.worker.limiter.shared import RedisPools
from services.worker.limiter.stats import LimiterStats

log = logging.getLogger(__name__)

Mode = Literal["shared", "local"]
_EQUAL_SHARE = TenantShare()


@dataclass(frozen=True)
class Grant:
    """Permission for one provider call; true it up with the real usage afterwards."""

    pool: str
    tenant: str
    tokens: int
    mode: Mode
    waited_s: float
    attempts: int
    w_eff: float = 1.0


@dataclass
class _Turn:
    """One (pool, tenant)'s callers in this process: the head asks Redis, the rest queue.

    asyncio.Lock is FIFO (a new caller never barges past queued ones), so the callers are
    served in order and each asks right after the one before it was granted.
    """

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    callers: int = 0
    polling: bool = False  # the head is waiting for the buckets' capacity
    # The buckets' levels right after the last grant (requests, tokens, monotonic time): the
    # next caller need not ask before they can have refilled to its needs.
    levels: tuple[float | None, float | None, float] | None = None


class SharedLimiter:
    """Shares each pool's RPM and TPM among every worker through Redis, fairly by tenant."""

    def __init__(self, redis: Redis, names: Names, pools: Mapping[str, PoolLimits],
                 tenants: Mapping[str, TenantShare] | None = None,
                 options: LimiterOptions | None = None, worker_id: str | None = None) -> None:
        self._options = options or LimiterOptions()
        self._shared = RedisPools(redis, names)
        self._local = LocalBuckets()
        self._pools = dict(pools)
        self._params = {name: self._pool_params(limits) for name, limits in self._pools.items()}
        self._tenants = dict(tenants or {})
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stats = LimiterStats()
        self._link = RedisLink(self._shared, self._local, self._stats, self._options,
                               self.worker_id, self._pool_views)
        self._turns: dict[tuple[str, str], _Turn] = {}
        self._polling: dict[str, int] = {}  # per pool, heads waiting for its buckets
        self._random = random.Random()

    def _pool_params(self, limits: PoolLimits) -> PoolParams:
        o = self._options
        window = max(o.min_window_tokens, o.fair_window_s * limits.tpm / 60)
        fair = FairParams(window, o.grace_s, o.fair_min_wait_s, o.fair_max_wait_s)
        return PoolParams(limits.rpm, limits.tpm, fair, limits.burst_s, o.jitter)

    @property
    def fallback(self) -> bool:
        """Whether the limiter is on its local buckets because Redis is unreachable."""
        return self._link.fallback

    @property
    def workers(self) -> int:
        return self._link.workers

    @property
    def limits(self) -> Mapping[str, PoolLimits]:
        """Return the limits in force by pool (they change as limits are learned)."""
        return self._pools

    def set_limits(self, pool: str, limits: PoolLimits) -> None:
        """Put new limits in force for a pool (learned from the provider, or adapted)."""
        if self._pools.get(pool) != limits:
            self._pools[pool] = limits
            self._params[pool] = self._pool_params(limits)

    def _limits(self, pool: str) -> PoolLimits:
        try:
            return self._pools[pool]
        except KeyError:
            raise UnknownPool(pool) from None

    def stats(self) -> dict[str, float | int | bool]:
        """Return cumulative in-process counters, for the worker's periodic events."""
        out: dict[str, float | int | bool] = dict(self._stats.snapshot())
        out.update(fallback=self._link.fallback, workers=self._link.workers)
        return out

    def _pool_views(self) -> Iterator[tuple[str, PoolLimits, PoolParams]]:
        for name, limits in self._pools.items():
            yield name, limits, self._params[name]

    # -- lifecycle: the link's heartbeat counts live workers and probes Redis in an outage --

    async def start(self) -> None:
        """Register this worker's heartbeat and keep it fresh in the background."""
        await self._link.start()

    async def close(self) -> None:
        """Stop the heartbeat and leave the set of live workers."""
        await self._link.close()

    async def __aenter__(self) -> SharedLimiter:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- the public API --

    async def acquire(self, pool: str, tenant: str, tokens: int) -> Grant:
        """Wait until the pool has a request and `tokens` tokens for this tenant; take them."""
        limits = self._limits(pool)
        share = self._tenants.get(tenant, _EQUAL_SHARE)
        cost = max(0, int(tokens))
        key = (pool, tenant)
        turn = self._turns.get(key)
        if turn is None:
            turn = self._turns[key] = _Turn()
        started = time.monotonic()
        attempts = 0
        turn.callers += 1
        try:
            # One caller per (pool, tenant) asks Redis at a time; the others queue behind it.
            async with turn.lock:
                try:
                    while True:
                        if turn.levels is not None:  # the grant before ours left the buckets
                            refill = self._refill_wait(pool, limits, turn, cost)
                            if refill > 0:
                                self._set_polling(pool, turn, True)
                                await asyncio.sleep(refill)
                        attempts += 1
                        req = Request(tenant, cost, share.weight, share.bounded_min_share,
                                      self._contenders(pool, turn), self._random.random())
                        outcome, mode = await self._attempt(pool, limits, req)
                        if outcome.granted:
                            if mode == "shared" and turn.callers > 1:  # others queue behind
                                turn.levels = (outcome.requests_level, outcome.tokens_level,
                                               time.monotonic())
                            break
                        self._stats.denied(pool, outcome.reason)
                        self._set_polling(pool, turn, outcome.reason == "rate")
                        await asyncio.sleep(self._sleep_for(outcome, mode))
                finally:
                    self._set_polling(pool, turn, False)
        finally:
            turn.callers -= 1
            if turn.callers == 0:
                self._turns.pop(key, None)
        waited = time.monotonic() - started
        self._stats.granted(pool, mode, cost, waited)
        return Grant(pool, tenant, cost, mode, waited, attempts, outcome.w_eff)

    def _refill_wait(self, pool: str, limits: PoolLimits, turn: _Turn, cost: int) -> float:
        """Return how long the buckets the last grant left need to refill for `cost` (spread).

        A lower bound: other workers' grants since then only make the real wait longer.
        """
        assert turn.levels is not None
        requests, tokens, at = turn.levels
        turn.levels = None
        now = time.monotonic()
        wait = 0.0
        for level, limit, need in ((requests, limits.rpm, 1.0), (tokens, limits.tpm, cost)):
            if level is not None and limit > 0:
                have = bucket.level_at(BucketState(level, at), limit, now, limits.burst_s)
                need = min(need, bucket.capacity(limit, limits.burst_s))
                wait = max(wait, bucket.shortfall(have, need, limit))
        if wait <= 0:
            return 0.0
        params = self._params[pool]
        req = Request("", cost, contenders=self._contenders(pool, turn),
                      u=self._random.random())
        interval = bucket.call_interval(limits.rpm, limits.tpm, cost, limits.burst_s)
        return min(spread(wait, interval, req, params), self._options.max_sleep_s)

    def _set_polling(self, pool: str, turn: _Turn, polling: bool) -> None:
        if turn.polling != polling:
            turn.polling = polling
            self._polling[pool] = self._polling.get(pool, 0) + (1 if polling else -1)

    def _contenders(self, pool: str, turn: _Turn) -> float:
        """Estimate how many callers poll the pool's buckets across all workers."""
        # Only one caller per (pool, tenant) polls in each process; assume the other workers
        # have as many as this one.
        heads = self._polling.get(pool, 0) + (0 if turn.polling else 1)
        return float(self._link.workers * heads)

    async def _attempt(self, pool: str, limits: PoolLimits,
                       req: Request) -> tuple[Outcome, Mode]:
        if self._link.fallback:
            self._link.probe_soon()
        else:
            started = time.perf_counter()
            try:
                outcome, _ = await self._link.call(self._shared.acquire(
                    pool, self._params[pool], req, int(self._options.state_ttl_s * 1000)))
            except SlowRedis:
                # Not an outage (yet): ask again soon. Had the script run, it took a call's
                # worth that nobody uses; the bucket refills it.
                return Outcome(False, self._options.timeout_retry_s, "timeout"), "shared"
            except REDIS_DOWN as exc:
                self._link.lost(exc)
            else:
                self._stats.decided(pool, time.perf_counter() - started)
                self._stats.levels(pool, limits, outcome.requests_level, outcome.tokens_level)
                return outcome, "shared"
        mine = limits.divided(self._link.workers)
        outcome = self._local.acquire(pool, mine, req.cost)
        self._stats.levels(pool, mine, outcome.requests_level, outcome.tokens_level)
        return outcome, "local"

    def _sleep_for(self, outcome: Outcome, mode: Mode) -> float:
        wait = outcome.wait_s
        if mode == "local" or outcome.reason not in ("fair", "rate"):
            # The script spreads its own fair and capacity waits; spread the others here.
            wait = wait * (1 + self._random.random() * self._options.jitter)
        return min(max(wait, 0.001), self._options.max_sleep_s)

    async def true_up(self, grant: Grant, actual_tokens: int) -> None:
        """Credit back (or debit) the difference between the estimate and the real usage."""
        delta = max(0, int(actual_tokens)) - grant.tokens
        if delta == 0:
            return
        self._stats.trued_up(grant.pool, delta)
        limits = self._limits(grant.pool)
        if not self._link.fallback:
            try:
                level = await self._link.call(self._shared.true_up(
                    grant.pool, limits.tpm, limits.burst_s, delta, grant.tenant, grant.w_eff))
            except SlowRedis as exc:  # it may have been applied: never apply it twice
                log.debug("limiter: true-up of %d tokens may be lost: %s", delta, exc)
                return
            except REDIS_DOWN as exc:
                self._link.lost(exc)
            else:
                self._stats.levels(grant.pool, limits, None, level)
                return
        self._local.true_up(grant.pool, limits.divided(self._link.workers), delta)

    async def pause(self, pool: str, seconds: float) -> None:
        """Pause every worker's calls on the pool for `seconds` (never shortens a pause)."""
        self._limits(pool)
        seconds = min(max(0.0, seconds), self._options.max_pause_s)
        if seconds <= 0:
            return
        self._stats.paused(pool, seconds)
        self._local.pause(pool, seconds)  # so the pause outlives a Redis outage
        for _ in range(2):  # a pause is rare and matters: retry one timeout
            if self._link.fallback:
                return
            try:
                await self._link.call(self._shared.pause(pool, math.ceil(seconds * 1000)))
            except SlowRedis as exc:
                log.debug("limiter: pause timed out: %s", exc)
                continue
            except REDIS_DOWN as exc:
                self._link.lost(exc)
            return

    async def rate_limited(self, pool: str, headers: Mapping[str, str]) -> float:
        """Record a 429 and pause the pool as long as its headers ask; return the pause."""
        self._stats.rate_limited(pool)
        seconds = retry_after_from_headers(headers)
        if seconds is None:
            seconds = self._options.default_pause_s
        await self.pause(pool, seconds)
        await self.observe_headers(pool, headers)
        return seconds

    async def observe_headers(self, pool: str, headers: Mapping[str, str]) -> None:
        """Lower the pool's buckets if the provider says fewer requests or tokens remain."""
        limits = self._limits(pool)
        requests, tokens = remaining_from_headers(headers)
        if requests is None and tokens is None:
            return
        if not self._link.fallback:
            try:
                levels = await self._link.call(self._shared.sync(pool, self._params[pool],
                                                             requests, tokens))
            except SlowRedis as exc:  # the next response's headers will tell us again
                log.debug("limiter: remaining levels not applied: %s", exc)
                return
            except REDIS_DOWN as exc:
                self._link.lost(exc)
            else:
                self._stats.levels(pool, limits, *levels)
                return
        n = self._link.workers
        self._local.correct(pool, limits.divided(n), None if requests is None else requests / n,
                            None if tokens is None else tokens / n)
