"""Benchmark the dashboard: 7 days of per-minute rollups for 20 tenants, then time page loads.

    python -m bench.dashboard_load [--postgres postgresql://root@127.0.0.1:5432/test]

Fills a fresh SQLite file (and a fresh PostgreSQL schema when given a URL) through the
collector's own writer, then times `GET /?window=7d` and `GET /api/metrics?window=7d` with the
Flask test client: median and p95 over 20 requests each. The target is under 300 ms.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import Engine, create_engine, insert, text
from sqlalchemy.orm import Session

from services.common.settings import Settings
from services.common.store import engine_url
from services.common.topology import Names
from services.dashboard import create_app
from services.dashboard.models import RESOLUTIONS, QueueSample, QueueStat, db
from services.dashboard.rollup import Delta, Heartbeat, LimiterFigures, bin_start
from services.dashboard.writer import apply_delta

TARGET_MS = 300.0
KINDS = {"classify": "cheap", "extract": "cheap", "summarize": "standard", "reason": "premium"}
PRICE = {"cheap": 0.00004, "standard": 0.0009, "premium": 0.012}
LLM_MS = {"cheap": 450.0, "standard": 1400.0, "premium": 6000.0}


def _minute(delta: Delta, rng: random.Random, ts: int, tenants: list[str]) -> None:
    """Add one minute of plausible traffic: a daily wave, some failures and cache hits."""
    wave = 0.55 + 0.45 * math.sin((ts % 86_400) / 86_400 * 2 * math.pi)
    for i, tenant in enumerate(tenants):
        for kind in list(KINDS)[i % 2: i % 2 + 3]:
            tier = KINDS[kind]
            tasks = max(0, int(rng.gauss(6 * wave, 2)))
            failed = sum(rng.random() < 0.02 for _ in range(tasks))
            hits = sum(rng.random() < 0.3 for _ in range(tasks - failed))
            for status, n in (("succeeded", tasks - failed), ("failed", failed)):
                if n == 0:
                    continue
                for row in delta.counts(ts, tenant, kind, tier, status):
                    row.count += n
                    row.cost_usd += (n - hits if status == "succeeded" else 0) * PRICE[tier]
                    row.saved_cache_usd += hits * PRICE[tier] if status == "succeeded" else 0
                    row.prompt_tokens += n * 420
                    row.completion_tokens += n * 90
                    row.cache_exact += hits if status == "succeeded" else 0
            for _ in range(tasks):
                llm = rng.lognormvariate(math.log(LLM_MS[tier]), 0.4)
                queue = rng.expovariate(1 / 300)
                delta.add_latency(ts, "llm", llm)
                delta.add_latency(ts, "queue", queue)
                delta.add_latency(ts, "total", llm + queue)


def _limiter(delta: Delta, ts: int, rng: random.Random) -> None:
    util = min(1.0, max(0.0, rng.gauss(0.6, 0.15)))
    for res in RESOLUTIONS:
        figures = delta.limiter.setdefault((res, bin_start(ts, res), "mock"), LimiterFigures())
        figures.samples += 12
        figures.util_sum += 12 * util
        figures.util_max = max(figures.util_max, util)
        figures.grants += 600
        figures.rate_limited += int(rng.random() < 0.05)


def _queues(session: Session, rng: random.Random, queues: list[str], first: int,
            now: float) -> None:
    """Write 5 s raw samples for the last two days and per-bin peaks for all seven."""
    raw, stats = [], {}
    depth = 0
    for ts in range(first, int(now) + 1, 5):
        depth = max(0, depth + rng.randint(-40, 41))
        for queue in queues:
            value = depth if ".work." in queue else depth // 9
            if ts >= now - 2 * 86_400:
                raw.append({"ts": float(ts), "queue": queue, "depth": value, "consumers": 2,
                            "unacked": None, "source": "amqp"})
            for res in RESOLUTIONS:
                key = (res, bin_start(ts, res), queue)
                peak = stats.get(key, {"max_depth": 0})["max_depth"]
                stats[key] = {"res": res, "ts": key[1], "queue": queue, "consumers": 2,
                              "max_depth": max(peak, value), "last_depth": value}
    session.execute(insert(QueueSample.__table__), raw)
    session.execute(insert(QueueStat.__table__), list(stats.values()))


def fill(engine: Engine, now: float, days: int = 7, tenant_count: int = 20,
         names: Names | None = None, seed: int = 7) -> int:
    """Write `days` of rollups ending at `now`; return how many minutes were written."""
    rng = random.Random(seed)
    names = names or Names("agentq")
    tenants = [f"tenant-{i:02d}" for i in range(tenant_count)]
    queues = names.monitored_queues()
    first = bin_start(now - days * 86_400, 60)
    minutes = list(range(first, int(now) + 1, 60))
    for day in range(0, len(minutes), 1440):
        delta = Delta()
        for ts in minutes[day:day + 1440]:
            _minute(delta, rng, ts, tenants)
            _limiter(delta, ts, rng)
        with Session(engine) as session:
            apply_delta(session, delta)
            session.commit()
    with Session(engine) as session:
        _queues(session, rng, queues, first, now)
        apply_delta(session, Delta(workers={
            f"w{i}": Heartbeat(f"w{i}", now, "worker", "cheap,standard", rng.randint(0, 32),
                               32, 1000 + i) for i in range(4)}))
        session.commit()
    return len(minutes)


def _time(client: object, url: str, rounds: int) -> tuple[float, float]:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        response = client.get(url)  # type: ignore[attr-defined]
        samples.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (url, response.status_code)
    samples.sort()
    return statistics.median(samples), samples[max(0, math.ceil(0.95 * len(samples)) - 1)]


def bench(database_url: str, label: str, rounds: int = 20) -> bool:
    """Fill one database and print the timings; return whether both met the target."""
    engine = create_engine(engine_url(database_url))
    db.metadata.create_all(engine)
    started = time.perf_counter()
    minutes = fill(engine, time.time())
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT count(*) FROM dash_rollups")).scalar_one()
    print(f"[{label}] filled {minutes:,} minutes × 20 tenants ({rows:,} rollup rows, all "
          f"resolutions) in {time.perf_counter() - started:.1f} s")
    engine.dispose()
    app = create_app(Settings(database_url=database_url))
    client = app.test_client()
    ok = True
    for url in ("/?window=7d", "/api/metrics?window=7d", "/?window=24h", "/?window=1h"):
        _time(client, url, 2)  # warm caches and the connection pool
        median, p95 = _time(client, url, rounds)
        ok &= p95 < TARGET_MS or "7d" not in url
        print(f"[{label}] GET {url:<26} median {median:6.1f} ms   p95 {p95:6.1f} ms   "
              f"{'ok' if p95 < TARGET_MS else 'SLOW'} (target < {TARGET_MS:.0f} ms)")
    with app.app_context():
        db.engine.dispose()
    return ok


def _postgres_schema(url: str) -> tuple[str, Engine, str]:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(engine_url(url))
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    joiner = "&" if "?" in url else "?"
    return f"{url}{joiner}options=-csearch_path%3D{schema}", admin, schema


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard_load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres", metavar="URL", help="also run against this PostgreSQL")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args(argv)
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        ok &= bench(f"sqlite:///{Path(tmp) / 'dashboard-bench.db'}", "sqlite", args.rounds)
    if args.postgres:
        url, admin, schema = _postgres_schema(args.postgres)
        try:
            ok &= bench(url, "postgresql", args.rounds)
        finally:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
