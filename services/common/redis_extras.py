"""Redis-backed extras are skipped during a Redis outage, never the task they serve.

Exact and semantic caches, in-flight dedup locks, spend counters and verification stats make
work cheaper; none of them is needed to do it. Failing a task because one of them is
unreachable would retry it until the delivery limit dead-letters it, and a failure after the
provider answered would pay for the call again. So each such step runs through
`Extras.attempt`: on a Redis error it counts the skip, warns (once per step per 30 s) and
goes on with the fallback a miss would give. The rate limiter has its own fallback (local
buckets, services.worker.limiter); the lane registry its own (the tier's queue).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable
from typing import TypeVar

from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.common.clients import redis_client

log = logging.getLogger(__name__)
T = TypeVar("T")

# What Redis raises when it is unreachable, restarting, read-only or out of memory.
REDIS_DOWN = (RedisError, OSError, TimeoutError)
WARN_EVERY_S = 30.0

SKIPPED = Counter("agentq_redis_skipped_total",
                  "Redis-backed steps skipped because Redis was unreachable",
                  ("service", "step"))


def extras_client(url: str) -> Redis:
    """Return a client for caches, locks and ledgers (`clients.redis_client`'s policy)."""
    return redis_client(url)


class Extras:
    """Run a service's Redis-backed steps so that an outage skips them."""

    def __init__(self, service: str) -> None:
        self.service = service
        self._warned: dict[str, float] = {}

    async def attempt(self, step: str, call: Awaitable[T], fallback: T) -> T:
        """Return what `call` returns, or `fallback` if Redis is unreachable."""
        try:
            return await call
        except REDIS_DOWN as exc:
            self._skipped(step, exc)
            return fallback

    def _skipped(self, step: str, exc: BaseException) -> None:
        SKIPPED.labels(self.service, step).inc()
        now = time.monotonic()
        if now - self._warned.get(step, -math.inf) >= WARN_EVERY_S:
            self._warned[step] = now
            log.warning("%s: Redis unreachable (%s: %s); %s skipped while it is", self.service,
                        type(exc).__name__, exc, step)
