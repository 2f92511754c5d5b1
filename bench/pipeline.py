"""`agentq bench pipeline`: tasks/s and latency through the whole pipeline on this machine.

Starts mockllm (zero latency by default), ingest, intake, router, recorder and N workers as
real processes in a scratch namespace, pushes tasks in through both doors, and reads the
stored results back from the database.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pika
from sqlalchemy import create_engine, text

from bench.stack import AMQP_URL, http, running_pipeline, wait_until
from services.common.quantile import nearest_rank
from services.common.store import engine_url


def publish_amqp(ns: str, count: int, rate: float = 0.0, tag: str = "burst") -> None:
    """Publish `count` tasks to `<ns>.submit` with confirms, at `rate`/s (0 = flat out)."""
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.confirm_delivery()
    props = pika.BasicProperties(content_type="application/json", delivery_mode=2)
    started = time.perf_counter()
    for i in range(count):
        if rate:
            time.sleep(max(0.0, started + i / rate - time.perf_counter()))
        body = json.dumps({"prompt": f"bench amqp {i} {uuid.uuid4()}", "kind": "classify",
                           "metadata": {"phase": tag}})
        channel.basic_publish(f"{ns}.submit", "task", body.encode(), props)
    connection.close()


def submit_http(url: str, count: int, threads: int) -> float:
    """POST `count` tasks in lists of 50 from `threads` clients; return the seconds taken."""
    lists = [[{"prompt": f"bench http {i}-{j} {uuid.uuid4()}", "kind": "extract"}
              for j in range(min(50, count - i))] for i in range(0, count, 50)]
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        statuses = list(pool.map(lambda tasks: http("POST", f"{url}/v1/tasks", tasks)[0], lists))
    assert set(statuses) == {202}, statuses
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentq bench pipeline", description=__doc__)
    parser.add_argument("--tasks", type=int, default=4000, help="tasks per door")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--steady-rate", type=float, default=50.0,
                        help="tasks/s of the steady phase that measures unloaded latency")
    parser.add_argument("--steady-seconds", type=float, default=10.0)
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="agentq_bench_"))
    db_url = f"sqlite:///{tmp / 'results.db'}"
    with running_pipeline(tmp, workers=args.workers, concurrency=args.concurrency,
                          env={"AGENTQ_LOG_LEVEL": "WARNING"},
                          mock_args=("--latency-ms", str(args.latency_ms)),
                          database_url=db_url, prefix="agentq_bench") as pipeline:
        engine = create_engine(engine_url(db_url))
        total = 2 * args.tasks

        def finished() -> int:
            with engine.connect() as conn:
                return int(conn.execute(text(
                    "SELECT count(*) FROM agentq_tasks WHERE status IN ('succeeded','failed')"
                )).scalar_one())

        started = time.perf_counter()
        http_seconds = submit_http(pipeline.ingest, args.tasks, threads=8)
        amqp_started = time.perf_counter()
        publish_amqp(pipeline.ns, args.tasks)
        amqp_seconds = time.perf_counter() - amqp_started
        wait_until(lambda: finished() >= total, 600, f"{total} results", interval=0.25)
        elapsed = time.perf_counter() - started
        steady = int(args.steady_rate * args.steady_seconds)
        publish_amqp(pipeline.ns, steady, rate=args.steady_rate, tag="steady")
        total += steady
        wait_until(lambda: finished() >= total, 300, f"{total} results", interval=0.25)

        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT status, latency_total_ms, result_json FROM agentq_tasks")).all()
        stats = pipeline.stats()

    succeeded = sum(1 for r in rows if r.status == "succeeded")
    burst = sorted(r.latency_total_ms for r in rows if '"phase":"steady"' not in r.result_json)
    calm = sorted(r.latency_total_ms for r in rows if '"phase":"steady"' in r.result_json)
    print(f"agentq bench pipeline: {total} tasks ({args.tasks} HTTP in lists of 50, "
          f"{args.tasks} AMQP), {args.workers} workers x concurrency {args.concurrency}, "
          f"provider latency {args.latency_ms:.0f} ms, {os.cpu_count()} cores")
    print(f"  succeeded            {succeeded}/{total}  (provider calls: {stats['completed']})")
    print(f"  throughput           {2 * args.tasks / elapsed:8.0f} tasks/s end to end "
          f"({elapsed:.1f} s wall)")
    print(f"  ingest HTTP          {args.tasks / http_seconds:8.0f} tasks/s accepted")
    print(f"  ingest AMQP publish  {args.tasks / amqp_seconds:8.0f} tasks/s published")
    print(f"  latency, burst (queueing included)  p50 {nearest_rank(burst, 0.50):7.0f} ms"
          f"  p99 {nearest_rank(burst, 0.99):7.0f} ms  mean {statistics.fmean(burst):7.0f} ms")
    print(f"  latency, steady {args.steady_rate:.0f}/s over AMQP       p50 "
          f"{nearest_rank(calm, 0.50):7.1f} ms  p99 {nearest_rank(calm, 0.99):7.1f} ms "
          f"(accepted -> result published)")
    return 0 if succeeded == total else 1


if __name__ == "__main__":
    raise SystemExit(main())
