"""Drive one system: feed its backlog, wait out the provider's burst, measure one window."""

from __future__ import annotations

import math
import time
from collections import Counter

from bench.limiter import cpu
from bench.limiter.decision import FloorProbe
from bench.limiter.measure import ProviderWatch, Result, admitted_so_far, rates
from bench.limiter.system import Record, System
from bench.limiter.workload import FLOOD, TENANTS, Backlog, Options, Workload
from bench.stack import http

POLL_S = 0.5


def measure(system: System, workload: Workload, opts: Options,
            floor: FloorProbe | None = None) -> Result:
    """Feed the backlog, wait out the burst, measure one window; return the figures.

    `floor`, if given, times the bare decision path in a process of its own over the window.
    """
    result = Result(system.name)
    backlog = Backlog(workload, opts.queued)
    done: Counter[str] = Counter()
    records: list[Record] = []
    watch = ProviderWatch(opts, workload.charged(FLOOD), time.monotonic())

    def collect() -> None:
        for record in system.collect():
            records.append(record)
            done[record.tenant] += 1

    def tick() -> None:
        if specs := backlog.top_up(done):
            system.publish(specs)
        collect()
        watch.update(dict(http("GET", f"{system.mock}/stats", timeout=5)[1]), time.monotonic())

    started = time.monotonic()
    system.publish(backlog.top_up(done))
    print(f"  [{system.name}] backlog of {sum(backlog.published.values()):,} published; "
          "waiting for the burst "
          "to be spent", flush=True)
    while True:
        tick()
        if watch.steady(time.monotonic()) or time.monotonic() - started > opts.max_warmup:
            break
        time.sleep(POLL_S)
    result.warmup_s = time.monotonic() - (watch.first_admit or started)
    before = watch.last
    result.bank_start = (watch.level_req, watch.level_tok)
    limiter0 = system.limiter_snapshot()
    groups = cpu.groups(system.pids())
    cpu0 = cpu.snapshot(groups)
    if floor is not None:
        floor.start(opts.window)
    t0 = time.time()
    m0 = time.monotonic()
    print(f"  [{system.name}] window opens after {result.warmup_s:.0f} s of warm-up "
          f"(provider buckets ~{watch.level_req:,.0f} requests, {watch.level_tok:,.0f} "
          f"tokens); measuring {opts.window:.0f} s", flush=True)
    lows = {t: math.inf for t in TENANTS}  # the fewest tasks each tenant had outstanding
    marks = [(m0, admitted_so_far(before))]
    while time.monotonic() - m0 < opts.window:
        time.sleep(POLL_S)
        tick()
        for tenant in TENANTS:
            lows[tenant] = min(lows[tenant], backlog.published[tenant] - done[tenant])
        if time.monotonic() - marks[-1][0] >= 5.0:
            marks.append((time.monotonic(), admitted_so_far(watch.last)))
    after = watch.last
    t1 = time.time()
    result.window_s = time.monotonic() - m0
    result.bank_end = (watch.level_req, watch.level_tok)
    limiter1 = system.limiter_snapshot()
    if floor is not None:
        result.decision_floor = floor.result()
    result.cpu = cpu.cores_used(cpu0, cpu.snapshot(groups), result.window_s)
    time.sleep(1.0)  # results of calls admitted inside the window may still be on their way
    collect()

    result.add_provider(before, after, opts.max_tokens)
    result.per_5s = rates(marks)
    result.add_records(records, t0, t1)
    result.backlogged = {t: lows[t] > 0 for t in TENANTS}
    if limiter0 is not None and limiter1 is not None:
        result.limiter = {k: v - limiter0.get(k, 0.0) for k, v in limiter1.items()}
    result.events_p99 = system.events_p99()
    return result
