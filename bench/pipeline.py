"""`agentq bench pipeline`: tasks/s and latency through the whole pipeline on this machine,
side by side with Celery and with the broker-only ceiling of agentq's message pattern.

Starts mockllm (zero latency by default), ingest, intake, router, recorder, the dashboard
(its collector) and N workers as real processes in a scratch namespace, pushes tasks in
through both doors, and reads the stored results back from the database. Then, in the same
run, with agentq's services stopped and the same mockllm process: Celery (bench/celery_peer.py)
with each --celery-pool over the same number of tasks, and the broker-only ceiling
(bench/broker_ceiling.py). CPU milliseconds per task of every process are read from /proc
(bench/proc_cpu.py) over each measured window.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pika
from sqlalchemy import create_engine, text

from bench.broker_ceiling import CeilingRun, deliveries_per_task, publishes_per_task, run_ceiling
from bench.proc_cpu import Meter, format_table, pids_matching
from bench.redis_calls import RedisCalls, summary
from bench.stack import (
    AMQP_URL,
    REDIS_URL,
    Pipeline,
    http,
    running_pipeline,
    scratch_namespace,
    wait_until,
)
from services.common.quantile import nearest_rank
from services.common.store import engine_url

# Celery's pools tried by default: on 2 cores (Celery 5.7, 2,000 tasks) threads:8 and
# threads:16 did ~330 tasks/s, prefork:4 ~270, prefork:2 ~110.
DEFAULT_POOLS = ("prefork:4", "threads:8", "threads:16")
COLLECTOR_MARKER = "services.dashboard.collector"  # the collector's command line
CELERY_MISSING = ("Celery is not installed, so the Celery peer is skipped: "
                  "pip install -e '.[bench]' (or .venv/bin/pip install 'celery>=5.4,<6')")


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


def shared_groups(pipeline: Pipeline) -> dict[str, list[int]]:
    """Return the processes every system shares: the broker, Redis and mockllm."""
    redis_port = str(urlparse(REDIS_URL).port or 6379)
    return {"RabbitMQ (beam.smp)": pids_matching("beam.smp"),
            "Redis": pids_matching("redis-server", f":{redis_port}"),
            "mockllm": [pipeline.stack.processes["mockllm"].pid]}


@dataclass
class AgentqRun:
    """What agentq's burst and steady phases measured."""

    tasks: int
    seconds: float
    http_seconds: float
    amqp_seconds: float
    provider_calls: int
    succeeded: int = 0
    total: int = 0
    burst_ms: list[float] = field(default_factory=list)
    steady_ms: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    redis_calls: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds if self.seconds else 0.0


def run_agentq(pipeline: Pipeline, args: argparse.Namespace, db_url: str) -> AgentqRun:
    """Run the burst (measured, CPU metered) and the steady phase through both doors."""
    engine = create_engine(engine_url(db_url))
    total = 2 * args.tasks

    def finished() -> int:
        with engine.connect() as conn:
            return int(conn.execute(text(
                "SELECT count(*) FROM agentq_tasks WHERE status IN ('succeeded','failed')"
            )).scalar_one())

    processes = pipeline.stack.processes
    meter = Meter({**shared_groups(pipeline), "client (this bench)": [os.getpid()],
                   **{name: [proc.pid] for name, proc in processes.items()
                      if name != "mockllm"}},
                  split={"collector": COLLECTOR_MARKER})
    http("POST", f"{pipeline.mock}/stats/reset")
    redis_calls = RedisCalls(REDIS_URL)
    redis_calls.start()
    meter.start()
    started = time.perf_counter()
    http_seconds = submit_http(pipeline.ingest, args.tasks, threads=8)
    amqp_started = time.perf_counter()
    publish_amqp(pipeline.ns, args.tasks)
    amqp_seconds = time.perf_counter() - amqp_started
    wait_until(lambda: finished() >= total, 600, f"{total} results", interval=0.25)
    run = AgentqRun(total, time.perf_counter() - started, http_seconds, amqp_seconds,
                    int(pipeline.stats()["completed"]), cpu=meter.stop(),
                    redis_calls=redis_calls.stop())
    steady = int(args.steady_rate * args.steady_seconds)
    publish_amqp(pipeline.ns, steady, rate=args.steady_rate, tag="steady")
    wait_until(lambda: finished() >= total + steady, 300, f"{total + steady} results",
               interval=0.25)
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT status, latency_total_ms, result_json FROM agentq_tasks")).all()
    engine.dispose()
    run.total = total + steady
    run.succeeded = sum(1 for r in rows if r.status == "succeeded")
    run.burst_ms = sorted(r.latency_total_ms for r in rows
                          if '"phase":"steady"' not in r.result_json)
    run.steady_ms = sorted(r.latency_total_ms for r in rows
                           if '"phase":"steady"' in r.result_json)
    return run


def stop_services(pipeline: Pipeline) -> None:
    """Stop every agentq process but mockllm, which the peer and the ceiling share."""
    for name in [n for n in pipeline.stack.processes if n != "mockllm"]:
        pipeline.stack.stop(name)


def run_celery(pipeline: Pipeline, pools: list[str], tasks: int, tmp: Path) -> list[Any]:
    """Run the Celery peer once per pool; [] (and a line saying why) without Celery."""
    if importlib.util.find_spec("celery") is None:
        print(CELERY_MISSING, flush=True)
        return []
    from bench.celery_peer import Pool, run_peer

    groups = shared_groups(pipeline)
    return [run_peer(Pool.parse(spec), tasks, pipeline.mock, tmp, groups) for spec in pools]


def _latency(values: list[float]) -> str:
    if not values:
        return "p50      - ms  p99      - ms"
    return (f"p50 {nearest_rank(values, 0.50):6.0f} ms  p99 {nearest_rank(values, 0.99):6.0f}"
            f" ms  mean {statistics.fmean(values):6.0f} ms")


def report(args: argparse.Namespace, agentq: AgentqRun, peers: list[Any],
           ceilings: list[CeilingRun], say: Callable[[str], None] = print) -> None:
    """Print the figures: agentq, Celery, the ceiling, the ratios and the CPU tables."""
    say(f"agentq bench pipeline: {agentq.total} tasks ({args.tasks} HTTP in lists of 50, "
        f"{args.tasks} AMQP, then {len(agentq.steady_ms)} steady), {args.workers} workers x "
        f"concurrency {args.concurrency}, provider latency {args.latency_ms:.0f} ms, "
        f"{os.cpu_count()} cores")
    say(f"  succeeded            {agentq.succeeded}/{agentq.total}  (provider calls in the "
        f"burst: {agentq.provider_calls} for {agentq.tasks} tasks)")
    say(f"  agentq               {agentq.rate:8.0f} tasks/s end to end "
        f"({agentq.seconds:.1f} s wall)   burst {_latency(agentq.burst_ms)}")
    say(f"  ingest HTTP          {args.tasks / agentq.http_seconds:8.0f} tasks/s accepted")
    say(f"  ingest AMQP publish  {args.tasks / agentq.amqp_seconds:8.0f} tasks/s published")
    say(f"  latency, steady {args.steady_rate:.0f}/s over AMQP  {_latency(agentq.steady_ms)} "
        "(accepted -> result published)")
    best = max(peers, key=lambda run: run.rate, default=None)
    for run in peers:
        say(f"  Celery {str(run.pool):<13} {run.rate:8.0f} tasks/s end to end "
            f"({run.seconds:.1f} s wall, {run.succeeded}/{run.tasks} succeeded, "
            f"{run.provider_calls} provider calls)   {_latency(run.latencies_ms)}"
            + ("   <- best" if run is best and len(peers) > 1 else ""))
    if best is not None:
        say(f"  ratio agentq / Celery {best.pool}: {agentq.rate / best.rate:.2f} x")
    # The whole server's counts: other users of this Redis add to them.
    say(f"  Redis commands, agentq: {summary(agentq.redis_calls, agentq.tasks)}")
    if best is not None:
        say(f"  Redis commands, Celery {best.pool}: {summary(best.redis_calls, best.tasks)}")
    for run in ceilings:
        pubs, dels = publishes_per_task(run.slim), deliveries_per_task(run.slim)
        say(f"  broker-only ceiling{' (one event)' if run.slim else ''} {run.rate:8.0f} tasks/s"
            f" ({run.publishes} confirmed publishes, {run.deliveries} deliveries in "
            f"{run.seconds:.1f} s: {run.publishes / run.seconds:.0f} publishes/s, "
            f"{run.deliveries / run.seconds:.0f} deliveries/s; per task HTTP "
            f"{pubs['http']}+{dels['http']}, AMQP {pubs['amqp']}+{dels['amqp']})")
        if not run.slim:
            say(f"  agentq's share of the ceiling: {100 * agentq.rate / run.rate:.0f} %")
    for line in format_table(agentq.cpu, agentq.tasks, agentq.seconds, "agentq"):
        say(line)
    if best is not None:
        for line in format_table(best.cpu, best.tasks, best.seconds, f"Celery {best.pool}"):
            say(line)
    for run in ceilings:
        for line in format_table(run.cpu, run.tasks, run.seconds, "broker-only ceiling"
                                 + (" (one event)" if run.slim else "")):
            say(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentq bench pipeline", description=__doc__)
    parser.add_argument("--tasks", type=int, default=4000, help="tasks per door")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--steady-rate", type=float, default=50.0,
                        help="tasks/s of the steady phase that measures unloaded latency")
    parser.add_argument("--steady-seconds", type=float, default=10.0)
    parser.add_argument("--celery-pool", action="append", default=None,
                        help="Celery pool to compare, KIND:N[xNODES] (repeatable; the best "
                             "is reported): default " + ", ".join(DEFAULT_POOLS))
    parser.add_argument("--no-celery", action="store_true", help="skip the Celery peer")
    parser.add_argument("--no-ceiling", action="store_true",
                        help="skip the broker-only ceiling")
    parser.add_argument("--slim-ceiling", action="store_true",
                        help="also measure the ceiling of a one-event-per-task pattern")
    parser.add_argument("--no-dashboard", action="store_true",
                        help="run without the dashboard and its collector")
    parser.add_argument("--database-url", default="",
                        help="results store (default: a scratch SQLite file)")
    args = parser.parse_args(argv)
    try:
        pools = args.celery_pool or list(DEFAULT_POOLS)
        if not args.no_celery and importlib.util.find_spec("celery") is not None:
            from bench.celery_peer import Pool

            for spec in pools:
                Pool.parse(spec)
    except ValueError as exc:
        parser.error(str(exc))

    tmp = Path(tempfile.mkdtemp(prefix="agentq_bench_"))
    db_url = args.database_url or f"sqlite:///{tmp / 'results.db'}"
    peers: list[Any] = []
    ceilings: list[CeilingRun] = []
    with running_pipeline(tmp, workers=args.workers, concurrency=args.concurrency,
                          env={"AGENTQ_LOG_LEVEL": "WARNING"},
                          mock_args=("--latency-ms", str(args.latency_ms)),
                          database_url=db_url, prefix="agentq_bench",
                          dashboard=not args.no_dashboard) as pipeline:
        agentq = run_agentq(pipeline, args, db_url)
        stop_services(pipeline)
        if not args.no_celery:
            peers = run_celery(pipeline, pools, agentq.tasks, tmp)
        broker = {k: v for k, v in shared_groups(pipeline).items() if k != "mockllm"}
        patterns = ([] if args.no_ceiling else [False]) + ([True] if args.slim_ceiling else [])
        for slim in patterns:
            with scratch_namespace(tmp / "ceiling", "agentq_bench", "unused://") as (ns, _):
                ceilings.append(run_ceiling(ns, args.tasks, args.workers, broker, slim))
    report(args, agentq, peers, ceilings)
    return 0 if agentq.succeeded == agentq.total else 1


if __name__ == "__main__":
    raise SystemExit(main())
