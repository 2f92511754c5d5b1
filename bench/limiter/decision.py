"""The limiter's decision path alone: acquire and settle against the same Redis, in one
process on a host with nothing else to do, as a baseline for the figure measured under load
(where the round trip also waits for a core the other processes hold)."""

from __future__ import annotations

import asyncio
import time
import uuid

from redis.asyncio import Redis

from bench.report import percentile
from services.common.topology import Names
from services.worker.limiter import PoolLimits, SharedLimiter
from tests.stack import REDIS_URL

TENANTS = 3


async def _measure(decisions: int) -> list[float]:
    redis = Redis.from_url(REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
    names = Names(f"agentq_bench_decision_{uuid.uuid4().hex[:8]}")
    # Limits no call reaches: every decision is a grant, so only the path is timed.
    limiter = SharedLimiter(redis, names, {"p": PoolLimits(rpm=10**7, tpm=10**10)}, {})
    took: list[float] = []
    try:
        async with limiter:
            for i in range(decisions):
                started = time.perf_counter()
                grant = await limiter.acquire("p", f"tenant-{i % TENANTS}", 500)
                took.append(time.perf_counter() - started)
                await limiter.settle(grant, 500)
    finally:
        keys = [key async for key in redis.scan_iter(match=f"{names.ns}:*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()
    return took


def decision_latency(decisions: int = 3000) -> tuple[float, float]:
    """Return the (p50, p99) in ms of `decisions` acquire calls, one at a time."""
    took = sorted(asyncio.run(_measure(decisions)))
    return percentile(took, 50) * 1000, percentile(took, 99) * 1000
