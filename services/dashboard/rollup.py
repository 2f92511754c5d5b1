"""Fold Results and Events into rollup increments (pure: no I/O, unit-testable).

A batch of messages becomes one `Delta`: additive counts per (resolution, bin, tenant, kind,
tier, status), latency bucket counts, limiter figures, worker heartbeats and scale events.
The writer adds a Delta onto the stored rows in one transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any

from services.common.models import Event, Result
from services.dashboard.histogram import bucket_of
from services.dashboard.models import RESOLUTIONS

NONE = "-"  # the dimension value of counts that do not come with that dimension

RollupKey = tuple[int, int, str, str, str, str]  # res, ts, tenant, kind, tier, status
LatencyKey = tuple[int, int, str, int]  # res, ts, stage, bucket
LimiterKey = tuple[int, int, str]  # res, ts, pool


@dataclass
class Counts:
    """Additive figures of one rollup row."""

    count: int = 0
    cost_usd: float = 0.0
    saved_cache_usd: float = 0.0
    saved_tiering_usd: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_exact: int = 0
    cache_semantic: int = 0
    retries: int = 0
    dead: int = 0
    routed: int = 0
    verified: int = 0
    verify_agreed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class LimiterFigures:
    """Limiter samples of one pool in one bin (counts add, utilisation keeps sum and max)."""

    samples: int = 0
    util_sum: float = 0.0
    util_max: float = 0.0
    grants: int = 0
    waits: int = 0
    holds: int = 0
    rate_limited: int = 0


@dataclass(frozen=True)
class Heartbeat:
    worker_id: str
    last_seen: float
    service: str
    tiers: str
    in_flight: int
    concurrency: int
    pid: int


@dataclass(frozen=True)
class Scaling:
    ts: float
    direction: str
    from_count: int
    to_count: int
    reason: str


@dataclass
class Delta:
    """Everything one batch of messages adds to the dashboard's tables."""

    rollups: dict[RollupKey, Counts] = field(default_factory=dict)
    latency: dict[LatencyKey, int] = field(default_factory=dict)
    limiter: dict[LimiterKey, LimiterFigures] = field(default_factory=dict)
    workers: dict[str, Heartbeat] = field(default_factory=dict)
    scaling: list[Scaling] = field(default_factory=list)

    def counts(self, ts: float, tenant: str | None, kind: str | None, tier: str | None,
               status: str) -> list[Counts]:
        """Return the rows (one per resolution) that a message at `ts` adds to."""
        # Cut to the column sizes: one overlong name must not fail a whole batch's write.
        dims = ((tenant or NONE)[:64], (kind or NONE)[:64], (tier or NONE)[:16], status[:16])
        rows = []
        for res in RESOLUTIONS:
            key: RollupKey = (res, bin_start(ts, res), *dims)
            rows.append(self.rollups.setdefault(key, Counts()))
        return rows

    def add_latency(self, ts: float, stage: str, value_ms: float) -> None:
        bucket = bucket_of(value_ms)
        for res in RESOLUTIONS:
            key: LatencyKey = (res, bin_start(ts, res), stage, bucket)
            self.latency[key] = self.latency.get(key, 0) + 1

    def is_empty(self) -> bool:
        return not (self.rollups or self.latency or self.limiter or self.workers
                    or self.scaling)


def bin_start(ts: float, res: int) -> int:
    """Return the start (epoch seconds) of the bin of width `res` holding `ts`."""
    return int(ts // res) * res


def fold_result(delta: Delta, result: Result) -> None:
    """Add one finished task."""
    ts = result.finished_at
    for row in delta.counts(ts, result.tenant, result.kind, result.tier, result.status):
        row.count += 1
        row.cost_usd += result.cost_usd
        if result.cache == "miss":
            row.saved_tiering_usd += result.cost_saved_usd
        else:
            row.saved_cache_usd += result.cost_saved_usd
        row.prompt_tokens += result.usage.prompt_tokens
        row.completion_tokens += result.usage.completion_tokens
        row.cache_exact += int(result.cache == "exact")
        row.cache_semantic += int(result.cache == "semantic")
    latency = result.latency_ms
    delta.add_latency(ts, "queue", latency.queue)
    delta.add_latency(ts, "total", latency.total)
    # A cache hit calls no model: counting its zero would make the LLM look faster than it is.
    if result.cache == "miss":
        delta.add_latency(ts, "llm", latency.llm)


def _number(data: dict[str, Any], key: str, default: float = 0.0) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return float(value)


def _bump(delta: Delta, event: Event, column: str, tier: str | None = None,
          kind: str | None = None) -> None:
    for row in delta.counts(event.ts, event.tenant, kind, tier, NONE):
        setattr(row, column, getattr(row, column) + 1)


def fold_event(delta: Delta, event: Event) -> None:
    """Add one telemetry event; unknown types are ignored (new services may send more)."""
    data = event.data
    tier = data.get("tier") if isinstance(data.get("tier"), str) else None
    match event.type:
        case "task.routed":
            kind = data.get("kind") if isinstance(data.get("kind"), str) else None
            _bump(delta, event, "routed", tier, kind)
        case "task.retry":
            _bump(delta, event, "retries", tier)
        case "task.dead":
            _bump(delta, event, "dead", tier)
        case "cache.verify":
            for row in delta.counts(event.ts, event.tenant, None, tier, NONE):
                row.verified += 1
                row.verify_agreed += int(data.get("agreed") is True)
        case "limiter.stats":
            _fold_limiter(delta, event)
        case "worker.heartbeat":
            _fold_heartbeat(delta, event)
        case "scale.up" | "scale.down":
            delta.scaling.append(Scaling(
                ts=event.ts, direction=event.type.split(".")[1],
                from_count=int(_number(data, "from")), to_count=int(_number(data, "to")),
                reason=str(data.get("reason", ""))[:500]))


def utilisation(data: dict[str, Any]) -> float:
    """Return the busier of the RPM and TPM budgets' used fraction (0 when unlimited)."""
    parts = []
    for used, limit in (("rpm_used", "rpm_limit"), ("tpm_used", "tpm_limit")):
        cap = _number(data, limit)
        if cap > 0:
            parts.append(_number(data, used) / cap)
    return max(parts, default=0.0)


def _fold_limiter(delta: Delta, event: Event) -> None:
    data = event.data
    pool = str(data.get("pool") or NONE)[:64]
    util = utilisation(data)
    for res in RESOLUTIONS:
        figures = delta.limiter.setdefault((res, bin_start(event.ts, res), pool),
                                           LimiterFigures())
        figures.samples += 1
        figures.util_sum += util
        figures.util_max = max(figures.util_max, util)
        figures.grants += int(_number(data, "grants"))
        figures.waits += int(_number(data, "waits"))
        figures.holds += int(_number(data, "holds"))
        # The provider's 429s: the worker reports them per pool here, and nowhere else.
        figures.rate_limited += int(_number(data, "rate_limited_429"))


def _fold_heartbeat(delta: Delta, event: Event) -> None:
    data = event.data
    worker_id = str(data.get("worker_id") or "")[:128]
    if not worker_id:
        return
    known = delta.workers.get(worker_id)
    if known is not None and known.last_seen >= event.ts:
        return
    tiers = data.get("tiers")
    delta.workers[worker_id] = Heartbeat(
        worker_id=worker_id, last_seen=event.ts, service=event.service[:64],
        tiers=",".join(str(t) for t in tiers)[:255] if isinstance(tiers, list) else "",
        in_flight=int(_number(data, "in_flight")), concurrency=int(_number(data, "concurrency")),
        pid=int(_number(data, "pid")))


def aggregate(results: Iterable[Result], events: Iterable[Event]) -> Delta:
    """Fold a batch of messages into one Delta."""
    delta = Delta()
    for result in results:
        fold_result(delta, result)
    for event in events:
        fold_event(delta, event)
    return delta
