"""Print the side-by-side table of `agentq bench limiter`, its notes and the targets met."""

from __future__ import annotations

import math
import os

from bench.limiter.decision import Latency
from bench.limiter.measure import Result, fairness, quantile
from bench.limiter.workload import FLOOD, LIGHT, TENANTS, Options, Workload

TARGET_RPM_PCT = 97.0
TARGET_P99_MS = 2.0
TARGET_LIGHT_PCT = 90.0
WIDTH = 36  # of each system's column
HOW_MEASURED = (
    "  how measured: requests/tokens/429s from each provider's /stats over the window "
    "(tokens as its TPM limit\n  counts them, prompt + max_tokens; over 100 % means "
    "it drew on its bucket); decision latency from the\n  workers' "
    "agentq_limiter_decision_seconds histograms (Redis round trip as each worker's "
    "event loop\n  sees it), scraped at both ends of the window, p50/p99 "
    "interpolated within buckets; the path alone:\n  3,000 acquires back to back in one "
    "process before anything else starts; paced: the same\n  path once every 10 ms from a "
    "process of its own over the window, which waits for a core\n  like the workers but "
    "never behind a worker's other work (the lowest the workers' figure\n  can be on this "
    "host); tokens served (prompt + max_tokens, as TPM\n  "
    "counts them) from the results (agentq) or the task's records (Celery) of calls\n  "
    "that succeeded in the window; fair share = max-min fair split (equal weights)\n  "
    "among tenants that stayed backlogged.")


def row(label: str, target: str, cells: list[str]) -> None:
    print(f"  {label:<31}{target:<11}" + "".join(f"{c:>{WIDTH}}" for c in cells))


def pct(x: float) -> str:
    return f"{x:.1f} %"


def rpm_pct(r: Result, opts: Options) -> float:
    return 100 * r.admitted / r.minutes / opts.rpm


def has_decisions(r: Result) -> bool:
    decision = r.decision
    return bool(decision and max(decision.values()) > 0)


def latency(r: Result) -> str:
    if r.decision is None:
        return "n/a (no limiter)"
    if not has_decisions(r):
        return "no decisions"
    return (f"{quantile(r.decision, 0.5) * 1000:.2f} / "
            f"{quantile(r.decision, 0.99) * 1000:.2f} ms")


def under_2ms(r: Result) -> str:
    if r.decision is None or not has_decisions(r):
        return "n/a"
    total = r.decision[math.inf]
    return f"{pct(100 * r.decision.get(0.002, 0.0) / total)} of {total:,.0f}"


def _baseline(latency: Latency | None) -> str:
    if latency is None:
        return "n/a"
    return (f"{latency.p50_ms:.2f} / {latency.p99_ms:.2f} ms, "
            f"{pct(latency.under_2ms_pct)} ≤ 2 ms")


def waits(r: Result) -> str:
    if not r.limiter or not r.limiter.get("grants"):
        return "n/a"
    grants = r.limiter["grants"]
    reasons = {k.split(":", 1)[1]: v for k, v in r.limiter.items()
               if k.startswith("denials:") and v}
    told = ", ".join(f"{v / grants:.0f} {k}" for k, v in sorted(reasons.items()))
    return f"{sum(reasons.values()) / grants:.0f} ({told or 'none'})"


def header(opts: Options, workload: Workload) -> None:
    print()
    print(f"agentq bench limiter: provider RPM {opts.rpm:,}, TPM {opts.tpm:,}, latency "
          f"{opts.latency_ms:.0f} ± {opts.jitter_ms:.0f} ms; {opts.workers} worker processes "
          f"× concurrency {opts.concurrency}; window {opts.window:.0f} s; "
          f"{os.cpu_count()} cores")
    charged = {t: workload.charged(t) for t in TENANTS}
    print(f"  backlog: {FLOOD} keeps {opts.flood_ratio}× the tasks of each of "
          f"{', '.join(LIGHT)} waiting, ~{opts.queued:,} in all, shuffled; prompts "
          f"{opts.flood_prompt} vs {opts.light_prompt} tokens, max_tokens {opts.max_tokens} "
          f"(charged per call {charged[FLOOD]} vs {charged[LIGHT[0]]})")
    print()


def provider_rows(results: list[Result], opts: Options) -> None:
    row("", "target", [r.system for r in results])
    row("warm-up before the window", "", [f"{r.warmup_s:.0f} s" for r in results])
    row("provider buckets, window start", "", [
        f"{r.bank_start[0]:,.0f} req, {r.bank_start[1] / 1000:,.1f}k tok" for r in results])
    row("provider buckets, window end", "", [
        f"{r.bank_end[0]:,.0f} req, {r.bank_end[1] / 1000:,.1f}k tok" for r in results])
    row("RPM used (admitted/min)", f"≥ {TARGET_RPM_PCT:.0f} %", [
        f"{pct(rpm_pct(r, opts))} ({r.admitted / r.minutes:,.0f}/min)" for r in results])
    row("TPM used (prompt+max_tokens)", "", [
        f"{pct(100 * r.charged_tokens / r.minutes / opts.tpm)} "
        f"({r.charged_tokens / r.minutes / 1000:,.1f}k/min)" for r in results])
    row("tokens billed (prompt+answer)", "", [
        f"{r.billed_tokens / r.minutes / 1000:,.1f}k/min" for r in results])
    row("429s from the provider", "0", [
        f"{r.rate_limited:,} (whole run {r.rate_limited_run:,})" for r in results])
    row("tasks failed for good", "", [f"{r.failed:,}" for r in results])


def limiter_rows(results: list[Result]) -> None:
    row("decision p50 / p99", f"p99 ≤ {TARGET_P99_MS:.0f} ms", [latency(r) for r in results])
    row("decisions ≤ 2 ms", "≥ 99 %", [under_2ms(r) for r in results])
    row("decision p50 / p99, path alone", "", [
        _baseline(r.decision_alone) for r in results])
    row("  paced, own process, in window", "", [_baseline(r.decision_floor) for r in results])
    row("p99, limiter.stats events, max", "", [
        "n/a" if r.events_p99 is None else f"{r.events_p99:.2f} ms" for r in results])
    row("limiter waits per grant", "", [waits(r) for r in results])


def _error(mean: float, p95: float) -> str:
    return f"mean {mean * 100:.1f} %, p95 {p95 * 100:.1f} %"


def estimate_rows(results: list[Result]) -> None:
    """The TPM estimate's error against the provider's usage, |estimate - usage| / usage."""
    errors = [r.estimate for r in results]
    row("TPM estimate vs usage: calls", "", ["n/a" if e is None else f"{e.calls:,}"
                                              for e in errors])
    row("  prompt tokens", "", ["n/a" if e is None else _error(e.prompt_mean, e.prompt_p95)
                                for e in errors])
    row("  prompt, by the approximation", "", [
        "n/a" if e is None else _error(e.approx_mean, e.approx_p95) for e in errors])
    row("  reserved (prompt+max_tokens)", "", [
        "n/a" if e is None else _error(e.total_mean, e.total_p95) for e in errors])


def fairness_rows(results: list[Result]) -> None:
    fair = [fairness(r) for r in results]
    for tenant in TENANTS:
        target = f"≥ {TARGET_LIGHT_PCT:.0f} %" if tenant in LIGHT else ""
        cells = []
        for r, (share, ratio, _) in zip(results, fair, strict=True):
            mark = "" if r.backlogged[tenant] else " ran dry"
            cells.append(f"{pct(100 * share[tenant])} = {ratio[tenant] * 100:.0f} % of fair, "
                         f"{r.calls[tenant]:,} calls{mark}")
        row(f"tokens served: {tenant}", target, cells)
    row("Jain's index (share ÷ fair)", "1.00", [f"{index:.3f}" for _, _, index in fair])


def series_and_cpu(results: list[Result]) -> None:
    print()
    for r in results:
        series = " ".join(f"{x:.0f}" for x in r.per_5s)
        print(f"  {r.system}: admitted req/s per 5 s of the window: {series}")
    print()
    for r in results:
        machine = r.cpu.get("machine", 0.0)
        named = {k: v for k, v in r.cpu.items() if k != "machine"}
        other = max(0.0, machine - sum(named.values()))
        parts = ", ".join(f"{k} {v:.2f}" for k, v in named.items())
        print(f"  {r.system}: CPU in the window, cores of {os.cpu_count()}: {parts}, "
              f"other processes {other:.2f} (all busy: {machine:.2f})")
    print()


def burst_notes(results: list[Result], opts: Options) -> None:
    """Say where a system drew on the provider's initial bucket inside the window."""
    noted = False
    for r in results:
        for i, (what, limit, used) in enumerate((("requests", opts.rpm, r.admitted),
                                                 ("tokens", opts.tpm, r.charged_tokens))):
            if r.bank_start[i] > 0.1 * limit and used / r.minutes > limit:
                noted = True
                print(f"  note: {r.system} drew on what was left of the provider's initial "
                      f"{what} bucket\n  ({r.bank_start[i]:,.0f} at the window's start, "
                      f"{r.bank_end[i]:,.0f} at its end): its {what} per minute above 100 % "
                      f"and its 429s\n  are not yet those of a steady state.")
    if noted:
        print()


def targets(results: list[Result], opts: Options) -> None:
    print("  targets:")
    width = max(len(r.system) for r in results)
    for r in results:
        _, ratio, _ = fairness(r)
        checks = [("RPM ≥ 97 %", rpm_pct(r, opts) >= TARGET_RPM_PCT),
                  ("0 × 429", r.rate_limited_run == 0)]
        if r.decision is not None and has_decisions(r):
            checks.append(("p99 ≤ 2 ms", quantile(r.decision, 0.99) * 1000 <= TARGET_P99_MS))
        checks.append(("light ≥ 90 % of fair",
                       all(ratio[t] * 100 >= TARGET_LIGHT_PCT for t in LIGHT)))
        print(f"    {r.system:<{width}}  " + "   ".join(
            f"{name}: {'met' if ok else 'MISSED'}" for name, ok in checks))
        floor = r.decision_floor
        if floor is not None and floor.p99_ms > TARGET_P99_MS:
            print(f"    {'':<{width}}  (the bare decision path, paced in a process of its own, "
                  f"had p99 {floor.p99_ms:.2f} ms in the same window:\n    {'':<{width}}  "
                  "this host's scheduling alone puts p99 ≤ 2 ms out of reach here)")


def report(results: list[Result], opts: Options, workload: Workload) -> None:
    """Print the whole report of the systems that ran."""
    header(opts, workload)
    provider_rows(results, opts)
    limiter_rows(results)
    estimate_rows(results)
    fairness_rows(results)
    series_and_cpu(results)
    print(HOW_MEASURED)
    print()
    burst_notes(results, opts)
    targets(results, opts)
