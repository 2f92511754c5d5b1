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
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from redis.asyncio import Redis
from redis.exceptions import TimeoutError as RedisTimeout

from services.common.redis_extras import REDIS_DOWN
from services.common.topology import Names
from services.worker.limiter import bucket
from services.worker.limiter.admission import Outcome, PoolParams, Request, spread
from services.worker.limiter.bucket import BucketState
from services.worker.limiter.fairness import FairParams
from services.worker.limiter.headers import remaining_from_headers, retry_after_from_headers
from services.worker.limiter.local import LocalBuckets
from services.worker.limiter.pools import LimiterOptions, PoolLimits, TenantShare, UnknownPool
from services.worker.limiter.shared import RedisPools
from services.worker.limiter.stats import LimiterStats

log = logging.getLogger(__name__)

Mode = Literal["shared", "local"]
T = TypeVar("T")
# The worker must keep calling (throttled locally) through all of these, so none may escape.
_REDIS_DOWN = REDIS_DOWN
# A call that took too long: most often the event loop's own lag under load, not Redis. Only
# pings that time out in a row too make it an outage. (TimeoutError is also an OSError.)
_TIMEOUTS = (TimeoutError, RedisTimeout)
_EQUAL_SHARE = TenantShare()


class _SlowRedis(Exception):
    """A Redis call timed out once: the caller retries; Redis is pinged to tell if it is down."""


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
        self._fallback = False
        self._next_probe = 0.0
        self._workers = 1  # last known live workers; 1 until Redis has told us otherwise
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._confirm_task: asyncio.Task[None] | None = None
        self._run_id: str | None = None  # Redis's, to tell a restart (state lost) from a blip
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
        return self._fallback

    @property
    def workers(self) -> int:
        return self._workers

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
        tasks = [t for t in (self._heartbeat_task, self._probe_task, self._confirm_task)
                 if t is not None]
        self._heartbeat_task = self._probe_task = self._confirm_task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if not self._fallback:
            try:
                await self._redis(self._shared.heartbeat(self.worker_id, 0, leave=True))
            except (_SlowRedis, *_REDIS_DOWN) as exc:  # the heartbeat expires on its own
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
            if self._run_id is None:
                self._run_id = await self._redis(self._shared.run_id())
        except _SlowRedis as exc:
            log.debug("limiter: heartbeat skipped: %s", exc)
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
        """Await one Redis call; raise _SlowRedis if it times out, and its error if it fails."""
        try:
            async with asyncio.timeout(self._options.redis_timeout_s):
                result = await call
        except _TIMEOUTS as exc:
            _resume_cancellation()
            self._timed_out(exc)
            raise _SlowRedis(f"no answer within {self._options.redis_timeout_s} s") from exc
        except _REDIS_DOWN:
            _resume_cancellation()
            raise
        _resume_cancellation()
        return result

    def _timed_out(self, exc: BaseException) -> None:
        """A call timed out: find out in the background whether Redis is down or we were slow."""
        self._stats.redis_timeout()
        running = self._confirm_task is not None and not self._confirm_task.done()
        if not self._fallback and not running:
            self._confirm_task = asyncio.create_task(self._confirm(exc), name="limiter-confirm")

    async def _confirm(self, first: BaseException) -> None:
        """Ping Redis: an outage only if it refuses, or if every ping in a row times out."""
        o = self._options
        for _ in range(max(1, o.outage_pings)):
            try:
                async with asyncio.timeout(o.redis_timeout_s):
                    await self._shared.ping()
            except _TIMEOUTS as exc:
                first = exc
                continue
            except _REDIS_DOWN as exc:
                self._lost(exc)
                return
            return  # Redis answers: the timeout was a slow await (often our own loop's lag)
        self._lost(first)

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
            run_id = await self._redis(self._shared.run_id())
            await self._reseed(run_id)
        except _SlowRedis as exc:
            log.debug("limiter: Redis still too slow: %s", exc)
            return
        except _REDIS_DOWN as exc:
            self._lost(exc)
            return
        self._run_id = run_id
        self._fallback = False
        self._stats.fallback(False)
        self._set_workers(live)
        log.info("limiter: Redis is back; sharing the pools again")

    async def _reseed(self, run_id: str) -> None:
        """Seed the buckets a restarted Redis lost with what the local slices hold together.

        A lost bucket reads as full, and recovering must not be a burst. But a Redis that kept
        its state (the same run id: we lost the connection, not Redis its data) holds live
        buckets that other workers draw on: those are never touched. Even after a restart,
        only missing buckets are written (another worker may have seeded them already).
        """
        if self._run_id is not None and run_id == self._run_id:
            return
        n = self._workers
        for pool, limits in self._pools.items():
            req, tok = self._local.levels(pool, limits.divided(n))
            if req is not None or tok is not None:
                await self._redis(self._shared.seed(
                    pool, self._params[pool], None if req is None else max(0.0, req) * n,
                    None if tok is None else max(0.0, tok) * n))

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
        return float(self._workers * heads)

    async def _attempt(self, pool: str, limits: PoolLimits,
                       req: Request) -> tuple[Outcome, Mode]:
        if self._fallback:
            self._probe_soon()
        else:
            started = time.perf_counter()
            try:
                outcome, _ = await self._redis(self._shared.acquire(
                    pool, self._params[pool], req, int(self._options.state_ttl_s * 1000)))
            except _SlowRedis:
                # Not an outage (yet): ask again soon. Had the script run, it took a call's
                # worth that nobody uses; the bucket refills it.
                return Outcome(False, self._options.timeout_retry_s, "timeout"), "shared"
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

    def _sleep_for(self, outcome: Outcome, mode: Mode) -> float:
        wait = outcome.wait_s
        if mode == "local" or outcome.reason not in ("fair", "rate"):
            # The script spreads its own fair and capacity waits; spread the others here.
            wait = wait * (1 + self._random.random() * self._options.jitter)
        return min(max(wait, 0.001), self._options.max_sleep_s)

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
            except _SlowRedis as exc:  # it may have been applied: never apply it twice
                log.debug("limiter: settle of %d tokens may be lost: %s", delta, exc)
                return
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
        for _ in range(2):  # a hold is rare and matters: retry one timeout
            if self._fallback:
                return
            try:
                await self._redis(self._shared.hold(pool, math.ceil(seconds * 1000)))
            except _SlowRedis as exc:
                log.debug("limiter: hold timed out: %s", exc)
                continue
            except _REDIS_DOWN as exc:
                self._lost(exc)
            return

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
            except _SlowRedis as exc:  # the next response's headers will tell us again
                log.debug("limiter: remaining levels not applied: %s", exc)
                return
            except _REDIS_DOWN as exc:
                self._lost(exc)
            else:
                self._stats.levels(pool, limits, *levels)
                return
        n = self._workers
        self._local.correct(pool, limits.divided(n), None if requests is None else requests / n,
                            None if tokens is None else tokens / n)
