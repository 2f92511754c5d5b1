"""The limiter's decision path without a worker around it: acquire and true up against the same
Redis, from a process that does nothing else.

Two baselines for the figure the workers measure under load:
- alone: back to back on a host with nothing else running (the path's own cost);
- the floor: paced like a worker's decisions (one every 10 ms, so the process sleeps in
  between), in a process of its own started when the window opens. It waits for a core like
  any process on the host, but never behind a worker's other work, so the workers' p99 can
  come no lower than this on this host.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass

from redis.asyncio import Redis

from bench.stack import REDIS_URL
from services.common.quantile import nearest_rank
from services.common.topology import Names
from services.worker.limiter import PoolLimits, SharedLimiter

TENANTS = 3
PACE_S = 0.010


@dataclass(frozen=True)
class Latency:
    """Percentiles of a run of decisions, in ms, and the share decided within 2 ms."""

    p50_ms: float
    p99_ms: float
    under_2ms_pct: float
    decisions: int

    @classmethod
    def of(cls, took_s: list[float]) -> Latency:
        took = sorted(took_s)
        under = sum(1 for t in took if t <= 0.002)
        return cls(nearest_rank(took, 0.50) * 1000, nearest_rank(took, 0.99) * 1000,
                   100 * under / max(1, len(took)), len(took))


async def _measure(decisions: int, pace_s: float = 0.0, seconds: float | None = None
                   ) -> list[float]:
    redis = Redis.from_url(REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
    names = Names(f"agentq_bench_decision_{uuid.uuid4().hex[:8]}")
    # Limits no call reaches: every decision is a grant, so only the path is timed.
    limiter = SharedLimiter(redis, names, {"p": PoolLimits(rpm=10**7, tpm=10**10)}, {})
    took: list[float] = []
    end = None if seconds is None else time.monotonic() + seconds
    try:
        async with limiter:
            i = 0
            while (i < decisions) if end is None else (time.monotonic() < end):
                started = time.perf_counter()
                grant = await limiter.acquire("p", f"tenant-{i % TENANTS}", 500)
                took.append(time.perf_counter() - started)
                await limiter.true_up(grant, 500)
                i += 1
                if pace_s:
                    await asyncio.sleep(pace_s)
    finally:
        keys = [key async for key in redis.scan_iter(match=f"{names.ns}:*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()
    return took


def decision_latency(decisions: int = 3000) -> Latency:
    """Time `decisions` acquire calls back to back, one at a time."""
    return Latency.of(asyncio.run(_measure(decisions)))


class FloorProbe:
    """The decision path paced like a worker's, in a process of its own, for one window."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[str] | None = None

    def start(self, seconds: float) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.limiter.decision", "--seconds", str(seconds)],
            stdout=subprocess.PIPE, text=True)

    def result(self, timeout_s: float = 30.0) -> Latency | None:
        """Wait for the probe to finish; None if it failed (the report then says n/a)."""
        if self._process is None:
            return None
        try:
            out, _ = self._process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.communicate()
            return None
        if self._process.returncode != 0:
            return None
        return Latency(**json.loads(out))

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.communicate()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Time the limiter's decision path, paced.")
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--pace", type=float, default=PACE_S, help="seconds between decisions")
    a = p.parse_args(argv)
    took = asyncio.run(_measure(0, a.pace, a.seconds))
    print(json.dumps(Latency.of(took).__dict__))
    return 0


if __name__ == "__main__":
    sys.exit(main())
