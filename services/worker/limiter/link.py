"""The limiter's link to Redis: timed round trips, the heartbeat, and the local fallback."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from redis.exceptions import TimeoutError as RedisTimeout

from services.common.redis_extras import REDIS_DOWN
from services.worker.limiter.admission import PoolParams
from services.worker.limiter.local import LocalBuckets
from services.worker.limiter.pools import LimiterOptions, PoolLimits
from services.worker.limiter.shared import RedisPools
from services.worker.limiter.stats import LimiterStats

log = logging.getLogger(__name__)

T = TypeVar("T")
# A call that took too long: most often the event loop's own lag under load, not Redis. Only
# pings that time out in a row too make it an outage. (TimeoutError is also an OSError.)
_TIMEOUTS = (TimeoutError, RedisTimeout)
# What a pool needs to be reseeded after a Redis restart: its name, limits and parameters.
PoolsView = Callable[[], Iterable[tuple[str, PoolLimits, PoolParams]]]


class SlowRedis(Exception):
    """A Redis call timed out once: the caller retries; Redis is pinged to tell if it is down."""


def _resume_cancellation() -> None:
    """Raise the cancellation a Redis call swallowed, so that a waiting caller can stop.

    redis-py sends with asyncio.wait_for, which on Python 3.11 drops a cancellation that
    arrives as the send completes; the acquire loop would then keep going forever.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class RedisLink:
    """Tells whether the shared pools are reachable, and counts the live workers.

    While Redis is unreachable the limiter is in fallback (local buckets, 1/workers of each
    pool); a background probe brings it back and reseeds the buckets a restart lost.
    """

    def __init__(self, shared: RedisPools, local: LocalBuckets, stats: LimiterStats,
                 options: LimiterOptions, worker_id: str, pools: PoolsView) -> None:
        self._shared = shared
        self._local = local
        self._stats = stats
        self._options = options
        self._worker_id = worker_id
        self._pools = pools
        self.fallback = False
        self.workers = 1  # last known live workers; 1 until Redis has told us otherwise
        self._next_probe = 0.0
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._confirm_task: asyncio.Task[None] | None = None
        self._run_id: str | None = None  # Redis's, to tell a restart (state lost) from a blip

    # -- lifecycle --

    async def start(self) -> None:
        """Register this worker's heartbeat and keep it fresh in the background."""
        if self._heartbeat_task is None:
            await self._beat()
            self._heartbeat_task = asyncio.create_task(self._heartbeat_loop(),
                                                       name="limiter-heartbeat")

    async def close(self) -> None:
        """Stop the background tasks and leave the set of live workers."""
        tasks = [t for t in (self._heartbeat_task, self._probe_task, self._confirm_task)
                 if t is not None]
        self._heartbeat_task = self._probe_task = self._confirm_task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if not self.fallback:
            try:
                await self.call(self._shared.heartbeat(self._worker_id, 0, leave=True))
            except (SlowRedis, *REDIS_DOWN) as exc:  # the heartbeat expires on its own
                log.debug("limiter: could not leave the workers set: %s", exc)

    async def _heartbeat_loop(self) -> None:
        o = self._options
        while True:
            await asyncio.sleep(o.probe_interval_s if self.fallback else o.heartbeat_interval_s)
            await self._beat()

    async def _beat(self) -> None:
        if self.fallback:
            self.probe_soon()
            return
        try:
            self._set_workers(await self._heartbeat())
            if self._run_id is None:
                self._run_id = await self.call(self._shared.run_id())
        except SlowRedis as exc:
            log.debug("limiter: heartbeat skipped: %s", exc)
        except REDIS_DOWN as exc:
            self.lost(exc)

    def _heartbeat(self) -> Awaitable[int]:
        ttl_ms = int(self._options.heartbeat_ttl_s * 1000)
        return self.call(self._shared.heartbeat(self._worker_id, ttl_ms))

    def _set_workers(self, live: int) -> None:
        self.workers = max(1, live)
        self._stats.workers(self.workers)

    # -- round trips --

    async def call(self, call: Awaitable[T]) -> T:
        """Await one Redis call; raise SlowRedis if it times out, and its error if it fails."""
        try:
            async with asyncio.timeout(self._options.redis_timeout_s):
                result = await call
        except _TIMEOUTS as exc:
            _resume_cancellation()
            self._timed_out(exc)
            raise SlowRedis(f"no answer within {self._options.redis_timeout_s} s") from exc
        except REDIS_DOWN:
            _resume_cancellation()
            raise
        _resume_cancellation()
        return result

    def _timed_out(self, exc: BaseException) -> None:
        """A call timed out: find out in the background whether Redis is down or we were slow."""
        self._stats.redis_timeout()
        running = self._confirm_task is not None and not self._confirm_task.done()
        if not self.fallback and not running:
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
            except REDIS_DOWN as exc:
                self.lost(exc)
                return
            return  # Redis answers: the timeout was a slow await (often our own loop's lag)
        self.lost(first)

    # -- the fallback state --

    def lost(self, exc: BaseException) -> None:
        """Record that Redis failed; go to the local buckets if not there already."""
        self._stats.redis_error()
        self._next_probe = time.monotonic() + self._options.probe_interval_s
        if self.fallback:
            return
        self.fallback = True
        self._local.reset()
        self._stats.fallback(True)
        log.warning("limiter: Redis unreachable (%s: %s); limiting locally at 1/%d of each "
                    "pool until it answers", type(exc).__name__, exc, self.workers)

    def probe_soon(self) -> None:
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
            run_id = await self.call(self._shared.run_id())
            await self._reseed(run_id)
        except SlowRedis as exc:
            log.debug("limiter: Redis still too slow: %s", exc)
            return
        except REDIS_DOWN as exc:
            self.lost(exc)
            return
        self._run_id = run_id
        self.fallback = False
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
        n = self.workers
        for pool, limits, params in self._pools():
            req, tok = self._local.levels(pool, limits.divided(n))
            if req is not None or tok is not None:
                await self.call(self._shared.seed(
                    pool, params, None if req is None else max(0.0, req) * n,
                    None if tok is None else max(0.0, tok) * n))
