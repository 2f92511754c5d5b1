"""The arithmetic of the figures: provider buckets, window deltas, histograms, fairness."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench.limiter.decision import Latency
from bench.limiter.estimate import EstimateError
from bench.limiter.system import Record
from bench.limiter.workload import TENANTS, Options

Stats = dict[str, Any]  # a provider's /stats body


# Long enough that a slow drain (the fair split can need a little more than the RPM while
# TPM binds) shows as falling, not as noise.
STEADY_S = 30.0


class ProviderWatch:
    """Estimate the provider's two buckets (full at its start) from its /stats over time."""

    def __init__(self, opts: Options, first_charge: int, now: float) -> None:
        self.opts, self.first_charge = opts, first_charge
        self.level_req, self.level_tok = float(opts.rpm), float(opts.tpm)
        self.admitted_req = 0.0
        self.admitted_tok = 0.0
        self.at = now
        self.first_admit: float | None = None
        # (time, requests left, tokens left, requests admitted, tokens charged) per update
        self.history: deque[tuple[float, float, float, float, float]] = deque(maxlen=128)
        self.last: Stats = {}

    def update(self, stats: Stats, now: float) -> None:
        """Refill both buckets for the time since the last update; take out what was spent."""
        admitted = stats["requests"] - stats["rate_limited"] - stats["errors"]
        done = max(1, stats["completed"])
        per_call = (stats["prompt_tokens"] / done + self.opts.max_tokens
                    if stats["completed"] else self.first_charge)
        charged = (stats["prompt_tokens"] + self.opts.max_tokens * stats["completed"]
                   + per_call * stats["in_flight"])
        dt = now - self.at
        self.level_req = min(self.opts.rpm, self.level_req + dt * self.opts.rpm / 60) - (
            admitted - self.admitted_req)
        self.level_tok = min(self.opts.tpm, self.level_tok + dt * self.opts.tpm / 60) - (
            charged - self.admitted_tok)
        self.admitted_req, self.admitted_tok, self.at = admitted, charged, now
        if self.first_admit is None and admitted > 0:
            self.first_admit = now
        self.history.append((now, self.level_req, self.level_tok, admitted, charged))
        self.last = stats

    def steady(self, now: float) -> bool:
        """Whether the initial burst is spent: a bucket nearly empty, or neither drawn down
        for STEADY_S while the provider admitted near its limits (a system still filling its
        queues draws nothing down either)."""
        if self.first_admit is None or now - self.first_admit < self.opts.min_warmup:
            return False
        if self.level_req < 0.02 * self.opts.rpm or self.level_tok < 0.02 * self.opts.tpm:
            return True
        last, req, tok, admitted, charged = self.history[-1]
        older = [h for h in self.history if last - h[0] >= STEADY_S]
        if not older:
            return False
        then, req0, tok0, admitted0, charged0 = older[-1]
        minutes = (last - then) / 60
        busy = ((admitted - admitted0) / minutes >= 0.9 * self.opts.rpm
                or (charged - charged0) / minutes >= 0.9 * self.opts.tpm)
        return busy and req >= req0 - 0.02 * self.opts.rpm and tok >= tok0 - 0.02 * self.opts.tpm


@dataclass
class Result:
    system: str
    warmup_s: float = 0.0
    window_s: float = 0.0
    admitted: int = 0
    completed: int = 0
    charged_tokens: float = 0.0
    billed_tokens: int = 0
    rate_limited: int = 0
    rate_limited_run: int = 0
    decision_alone: Latency | None = None  # back to back, idle host
    decision_floor: Latency | None = None  # paced, own process, during the window
    bank_start: tuple[float, float] = (0.0, 0.0)
    bank_end: tuple[float, float] = (0.0, 0.0)
    served: dict[str, int] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    failed: int = 0
    backlogged: dict[str, bool] = field(default_factory=dict)
    limiter: dict[str, float] | None = None  # the workers' limiter counters over the window
    events_p99: float | None = None
    per_5s: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)  # cores used in the window, by group
    estimate: EstimateError | None = None  # the TPM estimate against the provider's usage

    @property
    def decision(self) -> dict[float, float] | None:
        """The decision-latency histogram of the window (cumulative, by upper bound)."""
        if self.limiter is None:
            return None
        return {float(k.split(":", 1)[1]): v for k, v in self.limiter.items()
                if k.startswith("bucket:")}

    @property
    def minutes(self) -> float:
        return self.window_s / 60

    def add_provider(self, before: Stats, after: Stats, max_tokens: int) -> None:
        """Set the provider's figures from its /stats at both ends of the window."""

        def delta(key: str) -> int:
            return int(after[key]) - int(before[key])

        self.admitted = delta("requests") - delta("rate_limited") - delta("errors")
        self.completed = delta("completed")
        self.billed_tokens = delta("prompt_tokens") + delta("completion_tokens")
        self.charged_tokens = delta("prompt_tokens") + max_tokens * self.completed
        self.rate_limited = delta("rate_limited")
        self.rate_limited_run = int(after["rate_limited"])

    def add_records(self, records: list[Record], t0: float, t1: float) -> None:
        """Set the tokens served, calls and failures of the records inside [t0, t1]."""
        window = [r for r in records if t0 <= r.at <= t1]
        self.served = {t: sum(r.tokens for r in window if r.tenant == t and r.ok)
                       for t in TENANTS}
        self.calls = {t: sum(1 for r in window if r.tenant == t and r.ok) for t in TENANTS}
        self.failed = sum(1 for r in window if not r.ok)


def admitted_so_far(stats: Stats) -> int:
    """Return the requests the provider let through (not counting 429s) since it started."""
    return int(stats["requests"] - stats["rate_limited"])


def rates(marks: list[tuple[float, int]]) -> list[float]:
    """Return the per-second rate between consecutive (time, count) marks."""
    return [(b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(marks, marks[1:], strict=False)]


def limiter_figures(metrics: str) -> dict[str, float]:
    """Return a worker's limiter figures: decision-latency buckets, grants, waits by reason."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == "agentq_limiter_decision_seconds_bucket":
                key = f"bucket:{float(sample.labels['le'])!r}"
            elif sample.name == "agentq_limiter_grants_total":
                key = "grants"
            elif sample.name == "agentq_limiter_denials_total":
                key = f"denials:{sample.labels['reason']}"
            elif sample.name == "agentq_limiter_holds_total":
                key = "holds"
            else:
                continue
            out[key] = out.get(key, 0.0) + sample.value
    return out


def quantile(buckets: dict[float, float], q: float) -> float:
    """Return the q-quantile of a cumulative histogram, interpolated within its bucket."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return math.nan
    rank, lower, below = q * total, 0.0, 0.0
    for le in bounds:
        if buckets[le] >= rank:
            if math.isinf(le):
                return lower
            return lower + (le - lower) * (rank - below) / max(1e-12, buckets[le] - below)
        lower, below = le, buckets[le]
    return lower


def fair_shares(served: dict[str, int], backlogged: dict[str, bool]) -> dict[str, float]:
    """Max-min fair shares (equal weights) of the tokens served in the window.

    A tenant that stayed backlogged could have taken any amount; one that ran out of tasks
    asked for no more than it got. Water-filling then gives each the smaller of its demand
    and an equal split of what is left.
    """
    total = sum(served.values())
    if total <= 0:
        return {t: 1 / len(served) for t in served}
    demand = {t: (math.inf if backlogged[t] else float(v)) for t, v in served.items()}
    fair: dict[str, float] = {}
    left, open_ = float(total), set(served)
    while open_:
        level = left / len(open_)
        capped = {t for t in open_ if demand[t] <= level}
        if not capped:
            for t in open_:
                fair[t] = level
            break
        for t in capped:
            fair[t] = demand[t]
            left -= demand[t]
        open_ -= capped
    return {t: fair[t] / total for t in served}


def jain(values: list[float]) -> float:
    """Return Jain's fairness index of `values` (1 when all are equal)."""
    squares = sum(v * v for v in values)
    return (sum(values) ** 2) / (len(values) * squares) if squares else math.nan


def fairness(r: Result) -> tuple[dict[str, float], dict[str, float], float]:
    """Return each tenant's share of the tokens served, share ÷ fair share, and Jain's index."""
    total = sum(r.served.values())
    share = {t: (r.served[t] / total if total else 0.0) for t in TENANTS}
    fair = fair_shares(r.served, r.backlogged)
    ratio = {t: share[t] / fair[t] if fair[t] else math.nan for t in TENANTS}
    return share, ratio, jain([ratio[t] for t in TENANTS])
