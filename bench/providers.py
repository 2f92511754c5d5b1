"""`agentq bench providers`: agentq against a provider whose real RPM it is not told.

Starts a provider with an RPM quota (mockllm, and llmock when installed), runs agentq with
NO limits in the tier table over a backlog of tasks, and prints for each provider: the time
until the completed-call rate stays at >= 90 % of the real RPM, utilisation in that steady
state, 429s per 1,000 calls (all, and in the steady state) and tasks failed (target 0).

Both providers' buckets hold a minute of requests, so the first minute's burst is free; the
steady state is what the limiter learnt. The rate is measured over a trailing window of
WINDOW_S seconds; "converged" is the first moment after which every window up to the end
of the backlog is at >= 90 % of the quota.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.stack import Pipeline, free_port, http, running_pipeline, wait_until

WINDOW_S = 20.0
BURST_S = 60.0  # both providers' buckets start with a minute of requests
SAMPLE_S = 0.5
LLMOCK = Path(sys.executable).with_name("llmock")

Call = tuple[float, bool]  # when a call ended (s from the start), and whether it was a 429


@dataclass(frozen=True)
class Figures:
    provider: str
    rpm: int
    tasks: int
    failed: int
    calls: int
    refused: int
    timeline: str  # completions/429s per 10 s
    seconds: float  # until the backlog was done
    converged_s: float | None  # None: never held >= 90 % up to the end
    utilisation: float | None  # completions per minute after converging and BURST_S / rpm
    refused_steady: int
    calls_steady: int

    def row(self) -> str:
        converged = f"{self.converged_s:.0f} s" if self.converged_s is not None else "never"
        use = f"{self.utilisation:.0%}" if self.utilisation is not None else "-"
        per_k = 1000 * self.refused / self.calls if self.calls else 0.0
        steady_k = 1000 * self.refused_steady / self.calls_steady if self.calls_steady else 0.0
        return (f"{self.provider:<8} {self.rpm:>4} {self.tasks:>6} {self.seconds:>7.0f} "
                f"{converged:>10} {use:>11} {per_k:>9.1f} {steady_k:>12.1f} {self.failed:>7}")


HEADER = (f"{'provider':<8} {'rpm':>4} {'tasks':>6} {'seconds':>7} {'converged':>10} "
          f"{'utilisation':>11} {'429s/1k':>9} {'429s/1k late':>12} {'failed':>7}")


def figures(name: str, rpm: int, calls: Sequence[Call], tasks: int, failed: int,
            window_s: float = WINDOW_S) -> Figures:
    """Judge a run from the provider's view of every call (pure)."""
    ordered = sorted(calls)
    done = [t for t, refused in ordered if not refused]
    end = done[-1] if done else 0.0
    target = 0.9 * rpm * window_s / 60

    def completed_between(start: float, stop: float) -> int:
        return sum(start < t <= stop for t in done)

    # Walk back from the end: the steady state is the last stretch where every window holds.
    converged: float | None = None
    moment = end
    while moment - window_s >= 0 and completed_between(moment - window_s, moment) >= target:
        converged = moment - window_s
        moment -= 1.0
    # The steady state: converged, and past the first minute, whose burst the provider's
    # full bucket gives away (it would count more than the quota as "used").
    start = max(converged, BURST_S) if converged is not None else None
    steady = [(t, refused) for t, refused in ordered if start is not None and t > start]
    utilisation = None
    if start is not None and end > start:
        utilisation = completed_between(start, end) / ((end - start) / 60) / rpm
    return Figures(name, rpm, tasks, failed, len(ordered), sum(r for _, r in ordered),
                   timeline(ordered), end, converged, utilisation,
                   sum(r for _, r in steady), len(steady))


def timeline(calls: Sequence[Call], step_s: float = 10.0) -> str:
    """Return completions/429s per `step_s` seconds, e.g. `0s 60/0 | 10s 5/12 | ...`."""
    if not calls:
        return "no calls"
    buckets: dict[int, list[int]] = {}
    for t, refused in calls:
        counts = buckets.setdefault(int(t // step_s), [0, 0])
        counts[refused] += 1
    last = max(buckets)
    return " | ".join(f"{i * step_s:.0f}s {buckets.get(i, [0, 0])[0]}/{buckets.get(i, [0, 0])[1]}"
                      for i in range(last + 1))


def submit_backlog(pipeline: Pipeline, tasks: int) -> list[str]:
    run = uuid.uuid4().hex[:8]
    bodies = [{"prompt": f"providers bench {run} {i}", "tenant": f"t{i % 3}", "tier": "cheap",
               "cache": "off"} for i in range(tasks)]
    ids: list[str] = []
    for chunk in range(0, tasks, 100):
        status, body = http("POST", f"{pipeline.ingest}/v1/tasks", bodies[chunk:chunk + 100])
        assert status == 202, body
        ids += [item["id"] for item in body]
    return ids


def sampled_calls(read: Callable[[], dict[str, Any]], until: Callable[[], bool],
                  deadline_s: float) -> list[Call]:
    """Turn mockllm's running counts (GET /stats) into calls, stamped when first seen."""
    start, calls = time.monotonic(), []
    seen_ok = seen_refused = 0
    while time.monotonic() - start < deadline_s:
        stats, now = read(), time.monotonic() - start
        calls += [(now, False)] * (stats["completed"] - seen_ok)
        calls += [(now, True)] * (stats["rate_limited"] - seen_refused)
        seen_ok, seen_refused = stats["completed"], stats["rate_limited"]
        if until():
            break
        time.sleep(SAMPLE_S)
    return calls


def failed_count(pipeline: Pipeline, ids: list[str], timeout_s: float) -> int:
    done = pipeline.wait_done(ids, timeout=timeout_s)
    return sum(body["status"] != "succeeded" for body in done.values())


def run_mockllm(tmp: Path, rpm: int, tasks: int, workers: int) -> Figures:
    (tmp / "mockllm").mkdir(parents=True, exist_ok=True)
    with running_pipeline(tmp / "mockllm", workers=workers, mock_args=("--rpm", str(rpm)),
                          env={"AGENTQ_LOG_LEVEL": "WARNING"}) as pipeline:
        pipeline.stats()  # up
        http("POST", f"{pipeline.mock}/stats/reset")
        ids = submit_backlog(pipeline, tasks)
        deadline = tasks / (rpm / 60) + 300
        calls = sampled_calls(pipeline.stats, lambda: pipeline.stats()["completed"] >= tasks,
                              deadline)
        return figures("mockllm", rpm, calls, tasks, failed_count(pipeline, ids, 120))


def run_llmock(tmp: Path, rpm: int, tasks: int, workers: int) -> Figures:
    port = free_port()
    (tmp / "llmock").mkdir(parents=True, exist_ok=True)
    with open(tmp / "llmock" / "llmock.log", "wb") as log:
        server = subprocess.Popen([str(LLMOCK), "serve", "--host", "127.0.0.1", "--port",
                                   str(port), "--rpm", str(rpm), "--log-level", "warning"],
                                  stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http("GET", f"{url}/v1/models")[0] == 200, 30, "llmock")
        with running_pipeline(tmp / "llmock", workers=workers, provider=url,
                              env={"AGENTQ_LOG_LEVEL": "WARNING"}) as pipeline:
            ids = submit_backlog(pipeline, tasks)
            failed = failed_count(pipeline, ids, tasks / (rpm / 60) + 300)
            status, body = http("GET", f"{url}/_llmock/requests", timeout=30)
            assert status == 200, body
    finally:
        server.terminate()
        server.wait(timeout=10)
    records = [r for r in body["requests"] if r["path"].endswith("/chat/completions")]
    first = min(r["started_at"] for r in records)
    calls = [(r["ended_at"] - first, r["status"] == 429) for r in records]
    return figures("llmock", rpm, calls, tasks, failed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentq bench providers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rpm", type=int, default=60, help="the provider's real quota")
    parser.add_argument("--tasks", type=int, default=240, help="backlog per provider (>= 200)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--providers", default="mockllm,llmock",
                        help="which to run (llmock only when installed)")
    args = parser.parse_args(argv)
    if args.rpm <= 0 or args.tasks <= 0:
        parser.error("--rpm and --tasks must be positive")
    runners = {"mockllm": run_mockllm, "llmock": run_llmock}
    chosen = [name for name in args.providers.split(",") if name]
    unknown = [name for name in chosen if name not in runners]
    if unknown:
        parser.error(f"unknown provider(s) {unknown}: choose from {', '.join(runners)}")
    if "llmock" in chosen and not LLMOCK.exists():
        print("llmock is not installed (pip install 'agentq[test]'): skipped", flush=True)
        chosen.remove("llmock")
    tmp = Path(tempfile.mkdtemp(prefix="agentq_bench_providers_"))
    print(f"no limits in the tier table; provider quota {args.rpm} RPM; {args.tasks} tasks "
          f"at once; {args.workers} workers; rate over a {WINDOW_S:.0f} s window", flush=True)
    print(HEADER, flush=True)
    timelines = []
    for name in chosen:
        result = runners[name](tmp, args.rpm, args.tasks, args.workers)
        print(result.row(), flush=True)
        timelines.append(f"{name}: completed/429s per 10 s: {result.timeline}")
    print("\n".join(timelines))
    print("converged: seconds from the first call until the rate holds >= 90 % of the quota "
          "to the end; utilisation: completions/min / quota in the steady state (converged "
          "and past the first minute, whose full bucket is a free burst); 429s/1k late: in "
          "that steady state")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
