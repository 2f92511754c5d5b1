"""The worker's shared rate limiter: wait for a pool's capacity, settle, hold on 429s."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.common.topology import Names
from services.worker.limiter.admission import Outcome, PoolParams, Request
from services.worker.limiter.fairness import FairParams
from services.worker.limiter.headers import remaining_from_headers, retry_after_from_headers
from services.worker.limiter.local import LocalBuckets
from services.worker.limiter.pools import LimiterOptions, PoolLimits, TenantShare, UnknownPool
from services.worker.limiter.shared import RedisPools
from services.worker.limiter.stats import LimiterStats

log = logging.getLogger(__name__)

Mode = Literal["shared", "local"]
T = TypeVar("T")
# What Redis raises when it is unreachable, restarting, read-only or out of memory. The
# worker must keep calling (throttled locally) through all of these, so none may escape.
_REDIS_DOWN = (RedisError, OSError, TimeoutError)
_EQUAL_SHARE = TenantShare()


def _resume_cancellation() -> None:
    """Raise the cancellation a Redis call swallowed, so that a waiting caller can stop.

    redis-py sends with asyncio.wait_for, which on Python 3.11 drops a cancellation that
    arrives as the send completes; the acquire loop would then keep going forever.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


@dataclass(frozen=True)
class Grant:
    """Permission for one provider call; settle it with the real usage afterwards."""

    pool: str
    tenant: str
    tokens: int
    mode: Mode
    waited_s: float
    attempts: int
    w_eff: float = 1.0


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
        self._fallback = False
        self._next_probe = 0.0
        self._workers = 1  # last known live workers; 1 until Redis has told us otherwise
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._random = random.Random()

    def _pool_params(self, limits: PoolLimits) -> PoolParams:
        o = self._options
        window = max(o.min_window_tokens, o.fair_window_s * limits.tpm / 60)
        fair = FairParams(window, o.grace_s, o.fair_min_wait_s, o.fair_max_wait_s)
        return PoolParams(limits.rpm, limits.tpm, fair, limits.burst_s)

    @property
    def fallback(self) -> bool:
        """Whether the limiter is on its local buckets because Redis is unreachable."""
        return self._fallback

    @property
    def workers(self) -> int:
        return self._workers

    def _limits(self, pool: str) -> PoolLimits:
        try:
            return self._pools[pool]
        except KeyError:
            raise UnknownPool(pool) from None

    def stats(self) -> dict[str, float | int | bool]:
        """Return cumulative in-process counters, for the worker's periodic events."""
        out: dict[str, float | int | bool] = dict(self._stats.snapshot())
        out.update(fallback=self._fallback, workers=self._workers)
        return out

    # -- lifecycle: the heartbeat counts live workers and probes Redis during an outage --

    async def start(self) -> None:
        """Register this worker's heartbeat and keep it fresh in the background."""
        if self._heartbeat_task is None:
            await self._beat()
            self._heartbeat_task = asyncio.create_task(self._heartbeat_loop(),
                                                       name="limiter-heartbeat")

    async def close(self) -> None:
        """Stop the heartbeat and leave the set of live workers."""
        tasks = [t for t in (self._heartbeat_task, self._probe_task) if t is not None]
        self._heartbeat_task = self._probe_task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if not self._fallback:
            try:
                await self._redis(self._shared.heartbeat(self.worker_id, 0, leave=True))
            except _REDIS_DOWN as exc:  # the heartbeat expires on its own
                log.debug("limiter: could not leave the workers set: %s", exc)

    async def __aenter__(self) -> SharedLimiter:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _heartbeat_loop(self) -> None:
        o = self._options
        while True:
            await asyncio.sleep(o.probe_interval_s if self._fallback else o.heartbeat_interval_s)
            await self._beat()

    async def _beat(self) -> None:
        if self._fallback:
            self._probe_soon()
            return
        try:
            self._set_workers(await self._heartbeat())
        except _REDIS_DOWN as exc:
            self._lost(exc)

    def _heartbeat(self) -> Awaitable[int]:
        ttl_ms = int(self._options.heartbeat_ttl_s * 1000)
        return self._redis(self._shared.heartbeat(self.worker_id, ttl_ms))

    def _set_workers(self, live: int) -> None:
        self._workers = max(1, live)
        self._stats.workers(self._workers)

    # -- Redis round trips and the fallback state --

    async def _redis(self, call: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self._options.redis_timeout_s):
                result = await call
        except _REDIS_DOWN:
            _resume_cancellation()
            raise
        _resume_cancellation()
        return result

    def _lost(self, exc: BaseException) -> None:
        self._stats.redis_error()
        self._next_probe = time.monotonic() + self._options.probe_interval_s
        if self._fallback:
            return
        self._fallback = True
        self._local.reset()
        self._stats.fallback(True)
        log.warning("limiter: Redis unreachable (%s: %s); limiting locally at 1/%d of each "
                    "pool until it answers", type(exc).__name__, exc, self._workers)

    def _probe_soon(self) -> None:
        """Probe Redis in the background if a probe is due and none is running."""
        running = self._probe_task is not None and not self._probe_task.done()
        if not running and time.monotonic() >= self._next_probe:
            # In the background: callers keep their local pace, never waiting on a dead Redis.
            self._probe_task = asyncio.create_task(self._probe(), name="limiter-probe")

    async def _probe(self) -> None:
        """Try Redis again; if it answers, reseed its buckets and go back to the shared pools."""
        self._next_probe = time.monotonic() + self._options.probe_interval_s
        try:
            live = await self._heartbeat()
            await self._reseed()
        except _REDIS_DOWN as exc:
            self._lost(exc)
            return
        self._fallback = False
        self._stats.fallback(False)
        self._set_workers(live)
        log.info("limiter: Redis is back; sharing the pools again")

    async def _reseed(self) -> None:
        # A restarted Redis has lost its buckets, which then read as full: lower them to what
        # all workers' local slices hold together, so that recovering is not a burst.
        n = self._workers
        for pool, limits in self._pools.items():
            req, tok = self._local.levels(pool, limits.divided(n))
            if req is not None or tok is not None:
                await self._redis(self._shared.sync(
                    pool, self._params[pool], None if req is None else max(0.0, req) * n,
                    None if tok is None else max(0.0, tok) * n))

    # -- the public API --

    async def acquire(self, pool: str, tenant: str, tokens: int) -> Grant:
        """Wait until the pool has a request and `tokens` tokens for this tenant; take them."""
        limits = self._limits(pool)
        share = self._tenants.get(tenant, _EQUAL_SHARE)
        req = Request(tenant, max(0, int(tokens)), share.weight, share.bounded_min_share)
        started = time.monotonic()
        attempts = 0
        while True:
            attempts += 1
            outcome, mode = await self._attempt(pool, limits, req)
            if outcome.granted:
                break
            self._stats.denied(pool, outcome.reason)
            await asyncio.sleep(self._sleep_for(outcome.wait_s))
        waited = time.monotonic() - started
        self._stats.granted(pool, mode, int(req.cost), waited)
        return Grant(pool, tenant, int(req.cost), mode, waited, attempts, outcome.w_eff)

    async def _attempt(self, pool: str, limits: PoolLimits,
                       req: Request) -> tuple[Outcome, Mode]:
        if self._fallback:
            self._probe_soon()
        else:
            started = time.perf_counter()
            try:
                outcome, _ = await self._redis(self._shared.acquire(
                    pool, self._params[pool], req, int(self._options.state_ttl_s * 1000)))
            except _REDIS_DOWN as exc:
                self._lost(exc)
            else:
                self._stats.decided(pool, time.perf_counter() - started)
                self._stats.levels(pool, limits, outcome.requests_level, outcome.tokens_level)
                return outcome, "shared"
        mine = limits.divided(self._workers)
        outcome = self._local.acquire(pool, mine, req.cost)
        self._stats.levels(pool, mine, outcome.requests_level, outcome.tokens_level)
        return outcome, "local"

    def _sleep_for(self, wait_s: float) -> float:
        wait = min(max(wait_s, 0.001), self._options.max_sleep_s)
        return wait * (1 + self._random.random() * self._options.jitter)

    async def settle(self, grant: Grant, actual_tokens: int) -> None:
        """Credit back (or debit) the difference between the estimate and the real usage."""
        delta = max(0, int(actual_tokens)) - grant.tokens
        if delta == 0:
            return
        self._stats.settled(grant.pool, delta)
        limits = self._limits(grant.pool)
        if not self._fallback:
            try:
                level = await self._redis(self._shared.settle(
                    grant.pool, limits.tpm, limits.burst_s, delta, grant.tenant, grant.w_eff))
            except _REDIS_DOWN as exc:
                self._lost(exc)
            else:
                self._stats.levels(grant.pool, limits, None, level)
                return
        self._local.settle(grant.pool, limits.divided(self._workers), delta)

    async def hold(self, pool: str, seconds: float) -> None:
        """Pause every worker's calls on the pool for `seconds` (never shortens a hold)."""
        self._limits(pool)
        seconds = min(max(0.0, seconds), self._options.max_hold_s)
        if seconds <= 0:
            return
        self._stats.held(pool, seconds)
        self._local.hold(pool, seconds)  # so the hold outlives a Redis outage
        if not self._fallback:
            try:
                await self._redis(self._shared.hold(pool, math.ceil(seconds * 1000)))
            except _REDIS_DOWN as exc:
                self._lost(exc)

    async def rate_limited(self, pool: str, headers: Mapping[str, str]) -> float:
        """Record a 429 and hold the pool as long as its headers ask; return the hold."""
        self._stats.rate_limited(pool)
        seconds = retry_after_from_headers(headers)
        if seconds is None:
            seconds = self._options.default_hold_s
        await self.hold(pool, seconds)
        await self.observe_headers(pool, headers)
        return seconds

    async def observe_headers(self, pool: str, headers: Mapping[str, str]) -> None:
        """Lower the pool's buckets if the provider says fewer requests or tokens remain."""
        limits = self._limits(pool)
        requests, tokens = remaining_from_headers(headers)
        if requests is None and tokens is None:
            return
        if not self._fallback:
            try:
                levels = await self._redis(self._shared.sync(pool, self._params[pool],
                                                             requests, tokens))
            except _REDIS_DOWN as exc:
                self._lost(exc)
            else:
                self._stats.levels(pool, limits, *levels)
                return
        n = self._workers
        self._local.correct(pool, limits.divided(n), None if requests is None else requests / n,
                            None if tokens is None else tokens / n)
