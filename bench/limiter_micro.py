"""Measure the shared limiter's decision latency against a real Redis and print p50/p99.

    python -m bench.limiter_micro [--redis-url URL] [--calls 20000] [--concurrency 50]
                                  [--rate 1000]

Every acquire is granted at once (the pool's limits are far above the load), so each call
is one script run: "decision" is that Redis round trip as the limiter times it, "acquire"
is what the caller sees. Three runs: one task (the bare round trip); the tasks paced to
`--rate` calls per second in all for 5 s (ten times what a worker of a 6,000 RPM pool makes,
retries included); the tasks as fast as they can go, where the process's one event loop is
saturated and the figures are mostly its queueing (tasks ÷ calls per second).
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from redis.asyncio import Redis

from services.common.quantile import nearest_rank
from services.common.settings import Settings
from services.common.topology import Names
from services.worker.limiter import PoolLimits, SharedLimiter


async def measure(redis_url: str, calls: int, concurrency: int, tenants: int,
                  rate: float | None = None) -> dict[str, float]:
    """Run `calls` acquires from `concurrency` tasks, paced to `rate` in all if given."""
    client = Redis.from_url(redis_url, max_connections=concurrency + 5)
    names = Names(f"agentq_bench_{uuid.uuid4().hex[:8]}")
    limiter = SharedLimiter(client, names, {"pool": PoolLimits(rpm=10**9, tpm=10**12)})
    per_task, seen = calls // concurrency, []

    async def task(index: int, begin: float) -> None:
        tenant = f"tenant-{index % tenants}"
        interval = concurrency / rate if rate else 0.0
        for n in range(per_task):
            if interval:  # open loop: the next call is due at its time, whatever the last took
                due = begin + (n + index / concurrency) * interval
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
            started = time.perf_counter()
            await limiter.acquire("pool", tenant, 500)
            seen.append(time.perf_counter() - started)

    try:
        await limiter.acquire("pool", "warm-up", 1)  # loads the script, opens a connection
        started = time.perf_counter()
        await asyncio.gather(*(task(i, started) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
        stats = limiter.stats()
    finally:
        keys = [key async for key in client.scan_iter(match=f"{names.ns}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
    assert not stats["fallback"], "Redis was unreachable during the run"
    return {"calls": float(len(seen)), "per_s": len(seen) / elapsed,
            "decision_p50": float(stats["decision_p50_ms"]),
            "decision_p99": float(stats["decision_p99_ms"]),
            "acquire_p50": nearest_rank(seen, 0.50) * 1000,
            "acquire_p99": nearest_rank(seen, 0.99) * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=Settings().redis_url)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--tenants", type=int, default=3)
    parser.add_argument("--rate", type=float, default=1_000.0,
                        help="calls per second in all for the paced run")
    args = parser.parse_args()
    print(f"limiter decision latency, {args.calls:,} acquires, Redis at {args.redis_url}")
    print(f"{'run':<22} {'calls/s':>8} {'decision p50':>13} {'p99':>9} "
          f"{'acquire p50':>12} {'p99':>9}")
    runs = [("1 task", 1, None), (f"{args.concurrency} tasks, paced", args.concurrency,
                                  args.rate),
            (f"{args.concurrency} tasks, flat out", args.concurrency, None)]
    for name, concurrency, rate in runs:
        calls = min(args.calls, 5_000 if concurrency == 1 else int(rate or 0) * 5 or args.calls)
        r = asyncio.run(measure(args.redis_url, calls, concurrency, args.tenants, rate))
        print(f"{name:<22} {r['per_s']:>8,.0f} {r['decision_p50']:>10.3f} ms "
              f"{r['decision_p99']:>6.3f} ms {r['acquire_p50']:>9.3f} ms "
              f"{r['acquire_p99']:>6.3f} ms")


if __name__ == "__main__":
    main()
