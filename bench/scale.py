"""`agentq bench scale`: tasks/s for 1, 2, 4 and 8 worker processes, against linear.

mockllm answers after ~800 ms ± jitter, with no rate limit, and the tier table's limiter
ceiling is far above what the runs use, so each worker's own concurrency is the bound: a
worker with --concurrency 8 can finish at most 8 / 0.8 s = 10 tasks/s. For each worker count
the workers are started and registered first, then a backlog of --per-worker tasks per worker
goes straight onto the cheap tier's queue, and the clock runs until mockllm has completed
them all. Efficiency is tasks/s over (workers x the one-worker tasks/s).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from pathlib import Path

import pika

from bench.stack import AMQP_URL, Pipeline, http, running_pipeline, wait_until
from services.common.topology import Names


def publish_backlog(ns: str, count: int) -> None:
    """Put `count` tasks on `<ns>.work.cheap`, as the router would."""
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.confirm_delivery()
    props = pika.BasicProperties(content_type="application/json", delivery_mode=2)
    for i in range(count):
        task = {"id": str(uuid.uuid4()), "prompt": f"bench scale {i} {uuid.uuid4()}",
                "kind": "classify", "cache": "off", "max_tokens": 64}
        channel.basic_publish(f"{ns}.work", "cheap", json.dumps(task).encode(), props)
    connection.close()


def consumers(ns: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    ok = connection.channel().queue_declare(Names(ns).work_queue("cheap"), passive=True)
    connection.close()
    return int(ok.method.consumer_count)


def run_round(pipeline: Pipeline, workers: int, per_worker: int) -> tuple[int, float]:
    """Run one worker count over its backlog; return (tasks, seconds)."""
    ids = [f"{workers}-{i}" for i in range(workers)]
    for worker_id in ids:
        pipeline.start_worker(worker_id)  # worker --concurrency C --tiers cheap
    wait_until(lambda: consumers(pipeline.ns) == workers, 120, f"{workers} workers to register")
    http("POST", f"{pipeline.mock}/stats/reset")
    tasks = workers * per_worker
    started = time.perf_counter()
    publish_backlog(pipeline.ns, tasks)
    wait_until(lambda: pipeline.stats()["completed"] >= tasks, 600,
               f"{tasks} completions", interval=0.02)
    elapsed = time.perf_counter() - started
    for worker_id in ids:
        pipeline.stack.stop(f"worker-{worker_id}")
    return tasks, elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentq bench scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2,4,8", help="worker counts to run")
    parser.add_argument("--concurrency", type=int, default=8, help="tasks per worker at once")
    parser.add_argument("--per-worker", type=int, default=100, help="backlog per worker")
    parser.add_argument("--latency-ms", type=float, default=800.0)
    parser.add_argument("--jitter-ms", type=float, default=150.0)
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",") if n]

    tmp = Path(tempfile.mkdtemp(prefix="agentq_bench_"))
    bound = args.concurrency / (args.latency_ms / 1000)
    print(f"mockllm {args.latency_ms:.0f} ms ± {args.jitter_ms:.0f} ms, no rate limit; "
          f"--concurrency {args.concurrency} per worker (bound {bound:.1f} tasks/s a worker); "
          f"{args.per_worker} tasks per worker", flush=True)
    print(f"{'workers':>7} {'tasks':>6} {'seconds':>8} {'tasks/s':>8} {'per worker':>10} "
          f"{'efficiency':>10}", flush=True)
    # Only mockllm runs throughout; each round starts its workers on the cheap tier's queue.
    # A limiter ceiling far above what 8 workers can use: the workers are the bound.
    with running_pipeline(tmp, workers=0, concurrency=args.concurrency,
                          env={"AGENTQ_LOG_LEVEL": "WARNING"},
                          mock_args=("--latency-ms", str(args.latency_ms),
                                     "--jitter-ms", str(args.jitter_ms)),
                          rpm=1_000_000, tpm=1_000_000_000, worker_args=("--tiers", "cheap"),
                          services=(), database_url=f"sqlite:///{tmp / 'r.db'}",
                          prefix="agentq_bench") as pipeline:
        base: float | None = None
        for workers in counts:
            tasks, seconds = run_round(pipeline, workers, args.per_worker)
            rate = tasks / seconds
            base = base or rate / workers
            print(f"{workers:>7} {tasks:>6} {seconds:>8.1f} {rate:>8.1f} {rate / workers:>10.1f} "
                  f"{rate / (workers * base):>10.0%}", flush=True)
    print(f"logs: {tmp}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
