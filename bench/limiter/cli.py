"""`agentq bench limiter`: the shared limiter against Celery's `rate_limit`, side by side."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.limiter.agentq_run import AgentqSystem
from bench.limiter.celery_run import CelerySystem
from bench.limiter.decision import FloorProbe, decision_latency
from bench.limiter.measure import Result
from bench.limiter.report import report
from bench.limiter.system import System
from bench.limiter.window import measure
from bench.limiter.workload import Options, Workload

Maker = Callable[[Options, contextlib.ExitStack, Path], System]


def parse(argv: list[str]) -> Options:
    p = argparse.ArgumentParser(prog="agentq bench limiter",
                                description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--window", type=float, default=60.0, help="seconds measured (60)")
    p.add_argument("--rpm", type=int, default=1200)
    p.add_argument("--tpm", type=int, default=200_000)
    p.add_argument("--workers", type=int, default=6, help="worker processes per system")
    p.add_argument("--concurrency", type=int, default=50, help="calls in flight per worker")
    p.add_argument("--latency-ms", type=float, default=300.0)
    p.add_argument("--jitter-ms", type=float, default=100.0)
    p.add_argument("--flood-prompt", type=int, default=400, help="flood's prompt tokens")
    p.add_argument("--light-prompt", type=int, default=40, help="light tenants' prompt tokens")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--flood-ratio", type=int, default=10,
                   help="flood tasks per task of each light tenant")
    p.add_argument("--queued", type=int, default=1000,
                   help="tasks kept waiting in the broker at least (2× are published)")
    p.add_argument("--min-warmup", type=float, default=10.0)
    # The fair split can need more requests than the RPM allows while TPM binds: the request
    # bucket then drains slowly, and the steady state is minutes away.
    p.add_argument("--max-warmup", type=float, default=360.0)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--systems", default="agentq,celery",
                   help="comma-separated: agentq, celery (both by default)")
    p.add_argument("--keep-logs", action="store_true",
                   help="keep the processes' logs (their folder is printed)")
    a = p.parse_args(argv)
    systems = tuple(s.strip() for s in a.systems.split(",") if s.strip())
    if not systems or set(systems) - {"agentq", "celery"}:
        p.error("--systems takes agentq and/or celery")
    return Options(a.rpm, a.tpm, a.workers, a.concurrency, a.window, a.latency_ms,
                   a.jitter_ms, a.flood_prompt, a.light_prompt, a.max_tokens, a.flood_ratio,
                   a.queued, a.min_warmup, a.max_warmup, a.seed, systems, a.keep_logs)


def run_one(make: Maker, opts: Options, label: str) -> Result:
    """Start one system, measure it and stop it; keep its logs only if asked or it failed."""
    tmp = Path(tempfile.mkdtemp(prefix=f"agentq_bench_limiter_{label}_"))
    ok = False
    try:
        with contextlib.ExitStack() as exit_stack:
            alone = floor = None
            if label == "agentq":  # before anything else runs on the host
                alone = decision_latency()
                print(f"  [{label}] decision path alone: p50 {alone.p50_ms:.2f} ms, "
                      f"p99 {alone.p99_ms:.2f} ms", flush=True)
                floor = FloorProbe()
                exit_stack.callback(floor.stop)
            print(f"  [{label}] starting", flush=True)
            system = make(opts, exit_stack, tmp)
            result = measure(system, Workload(opts), opts, floor)
            result.estimate = system.estimate_error()
            result.decision_alone = alone
            print(f"  [{label}] stopping and cleaning up", flush=True)
        ok = True
        return result
    finally:
        if ok and not opts.keep_logs:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"  [{label}] logs kept in {tmp}", file=sys.stderr)


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    """Run the systems asked for one after the other, then print their table."""
    opts = parse(sys.argv[1:] if argv is None else argv)
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=2).close()
        socket.create_connection(("127.0.0.1", 6379), timeout=2).close()
    except OSError as exc:
        print(f"agentq bench limiter needs RabbitMQ (5672) and Redis (6379): {exc}",
              file=sys.stderr)
        return 2
    if "celery" in opts.systems and not all(
            importlib.util.find_spec(name) for name in ("celery", "gevent")):
        print("the Celery peer needs Celery and gevent: pip install 'agentq[bench]' "
              "(or run with --systems agentq)", file=sys.stderr)
        return 2
    makers: dict[str, Maker] = {"agentq": AgentqSystem, "celery": CelerySystem}
    previous = signal.signal(signal.SIGTERM, _interrupt)  # clean up on SIGTERM as on Ctrl-C
    started = time.monotonic()
    results: list[Result] = []
    try:
        for name in opts.systems:
            results.append(run_one(makers[name], opts, name))
    except KeyboardInterrupt:
        print("\ninterrupted; everything started was stopped and cleaned up", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    report(results, opts, Workload(opts))
    print(f"\n  ({time.monotonic() - started:.0f} s in all)")
    return 0
