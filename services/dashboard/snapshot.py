"""Turn the window's aggregated rows into the `/api/metrics` document (pure)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from services.dashboard.alerts import TITLES, UNITS, describe
from services.dashboard.histogram import QUANTILES, STAGES, percentile, percentiles
from services.dashboard.queries import SUMMED, Window

HOURS_PER_MONTH = 730.0
TIERS = ("cheap", "standard", "premium")


@dataclass
class Raw:
    """What the queries returned for one window."""

    window: Window
    now: float
    namespace: str
    rollups: list[dict[str, Any]]
    latency: list[tuple[int, str, int, int]]
    queue_points: list[tuple[float, str, int]]
    latest: dict[str, dict[str, Any]]
    queues: list[str]  # the pipeline queues, in display order
    limiter: list[dict[str, Any]]
    workers: list[dict[str, Any]]
    scale_events: list[dict[str, Any]]
    tenants: list[dict[str, Any]]
    alerts: list[dict[str, Any]]
    backlog_queues: list[str] = field(default_factory=list)


def _ratio(part: float, whole: float, scale: float = 1.0) -> float | None:
    return None if whole <= 0 else round(part / whole * scale, 4)


def _r(value: float, digits: int = 4) -> float:
    return round(float(value), digits)


def window_totals(rows: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Sum every figure over the window, with tasks split by status."""
    sums: dict[str, float] = defaultdict(float)
    for row in rows:
        for column in SUMMED:
            sums[column] += row[column] or 0
        sums[str(row["status"])] += row["count"] or 0
    return sums


def summary(sums: Mapping[str, float], span_s: float, limiter_429: float) -> dict[str, Any]:
    """Return the headline numbers of a window."""
    tasks = sums.get("count", 0.0)
    cost = sums.get("cost_usd", 0.0)
    hours = max(span_s, 1.0) / 3600
    per_hour = cost / hours
    # The limiter and the provider events see the same 429s: take the larger, never the sum.
    rate_limited = max(sums.get("rate_limited", 0.0), limiter_429)
    saved_cache, saved_tiering = sums.get("saved_cache_usd", 0.0), sums.get(
        "saved_tiering_usd", 0.0)
    hits = sums.get("cache_exact", 0.0) + sums.get("cache_semantic", 0.0)
    return {
        "tasks": int(tasks), "succeeded": int(sums.get("succeeded", 0)),
        "failed": int(sums.get("failed", 0)),
        "throughput_per_min": _r(tasks / (hours * 60), 2),
        "error_rate_pct": _ratio(sums.get("failed", 0.0), tasks, 100),
        "cost_usd": _r(cost, 6), "cost_per_task_usd": _ratio(cost, tasks),
        "cost_per_hour_usd": _r(per_hour, 4),
        "projected_monthly_usd": _r(per_hour * HOURS_PER_MONTH, 2),
        "saved_usd": _r(saved_cache + saved_tiering, 6), "saved_cache_usd": _r(saved_cache, 6),
        "saved_tiering_usd": _r(saved_tiering, 6),
        "cache_hit_rate_pct": _ratio(hits, tasks, 100),
        "cache_exact": int(sums.get("cache_exact", 0)),
        "cache_semantic": int(sums.get("cache_semantic", 0)),
        "semantic_agreement_pct": _ratio(sums.get("verify_agreed", 0.0),
                                         sums.get("verified", 0.0), 100),
        "semantic_verified": int(sums.get("verified", 0)),
        "semantic_wrong_hit_pct": _ratio(sums.get("verified", 0.0) - sums.get("verify_agreed", 0.0),
                                         sums.get("verified", 0.0), 100),
        "prompt_tokens": int(sums.get("prompt_tokens", 0)),
        "completion_tokens": int(sums.get("completion_tokens", 0)),
        "retries": int(sums.get("retries", 0)), "dead": int(sums.get("dead", 0)),
        "rate_limited": int(rate_limited),
        "rate_limited_per_min": _r(rate_limited / (hours * 60), 3),
    }


def _bins(window: Window, now: float) -> list[int]:
    start, last = window.start(now), int(now // window.res) * window.res
    return list(range(start, last + 1, window.res))


def _series(raw: Raw, bins: list[int]) -> dict[str, Any]:
    index = {ts: i for i, ts in enumerate(bins)}
    n = len(bins)
    # The last bin is still filling: rates divide by the part of it that has passed, so the
    # chart does not show a drop at every minute's start (at least 10 s, against noise).
    seconds = [float(raw.window.res)] * n
    seconds[-1] = min(float(raw.window.res), max(raw.now - bins[-1], 10.0))
    per_min = [60.0 / s for s in seconds]
    per_hour = [3600.0 / s for s in seconds]
    out: dict[str, list[float]] = defaultdict(lambda: [0.0] * n)
    tiers: dict[str, list[float]] = {t: [0.0] * n for t in TIERS}
    for row in raw.rollups:
        i = index.get(int(row["ts"]))
        if i is None:
            continue
        count = row["count"] or 0
        if row["status"] in ("succeeded", "failed"):
            out[row["status"]][i] += count * per_min[i]
            tiers.setdefault(row["tier"], [0.0] * n)[i] += count
        out["tasks"][i] += count
        out["cost_per_hour"][i] += (row["cost_usd"] or 0) * per_hour[i]
        out["saved_per_hour"][i] += ((row["saved_cache_usd"] or 0)
                                     + (row["saved_tiering_usd"] or 0)) * per_hour[i]
        out["cache_exact"][i] += row["cache_exact"] or 0
        out["cache_semantic"][i] += row["cache_semantic"] or 0
        out["rate_limited"][i] += row["rate_limited"] or 0
    hits = [e + s for e, s in zip(out["cache_exact"], out["cache_semantic"], strict=True)]
    return {
        "t": bins,
        "succeeded_per_min": [_r(v, 3) for v in out["succeeded"]],
        "failed_per_min": [_r(v, 3) for v in out["failed"]],
        "cost_per_hour": [_r(v, 6) for v in out["cost_per_hour"]],
        "saved_per_hour": [_r(v, 6) for v in out["saved_per_hour"]],
        "cache_exact": out["cache_exact"], "cache_semantic": out["cache_semantic"],
        "cache_miss": [t - h for t, h in zip(out["tasks"], hits, strict=True)],
        "cache_hit_rate_pct": [_ratio(h, t, 100) for h, t in zip(hits, out["tasks"],
                                                                  strict=True)],
        "tiers": {t: v for t, v in tiers.items() if t in TIERS or any(v)},
        "latency": _latency_series(raw.latency, index, n),
        **_limiter_series(raw.limiter, index, n, out["rate_limited"]),
        "queue_depth": _queue_series(raw.queue_points, raw.queues),
    }


def _latency_series(rows: list[tuple[int, str, int, int]], index: dict[int, int],
                    n: int) -> dict[str, dict[str, list[float | None]]]:
    hists: dict[tuple[str, int], dict[int, int]] = defaultdict(dict)
    for ts, stage, bucket, count in rows:
        i = index.get(ts)
        if i is not None:
            hists[(stage, i)][bucket] = hists[(stage, i)].get(bucket, 0) + count
    series: dict[str, dict[str, list[float | None]]] = {}
    for stage in STAGES:
        series[stage] = {}
        for q in QUANTILES:
            values = [percentile(hists.get((stage, i), {}), q) for i in range(n)]
            series[stage][f"p{round(q * 100)}"] = [None if v is None else round(v, 1)
                                                   for v in values]
    return series


def _limiter_series(rows: list[dict[str, Any]], index: dict[int, int], n: int,
                    event_429: list[float]) -> dict[str, Any]:
    util: dict[str, list[float | None]] = {}
    limiter_429 = [0.0] * n
    for row in rows:
        i = index.get(int(row["ts"]))
        if i is None:
            continue
        pool = util.setdefault(row["pool"], [None] * n)
        samples = row["samples"] or 0
        pool[i] = round(row["util_sum"] / samples * 100, 1) if samples else None
        limiter_429[i] += row["rate_limited"] or 0
    return {"limiter_util_pct": util,
            "rate_limited": [max(a, b) for a, b in zip(event_429, limiter_429, strict=True)]}


def _queue_series(points: list[tuple[float, str, int]], queues: list[str]
                  ) -> dict[str, dict[str, list[float]]]:
    series: dict[str, dict[str, list[float]]] = {q: {"t": [], "depth": []} for q in queues}
    for ts, queue, depth in points:
        if queue in series:
            series[queue]["t"].append(ts)
            series[queue]["depth"].append(depth)
    return series


def _queue_table(raw: Raw) -> list[dict[str, Any]]:
    table = []
    for name in raw.queues:
        reading = raw.latest.get(name)
        table.append({
            "name": name, "depth": None if reading is None else reading["depth"],
            "unacked": None if reading is None else reading["unacked"],
            "consumers": None if reading is None else reading["consumers"],
            "age_s": None if reading is None else round(raw.now - reading["ts"], 1)})
    return table


def alert_list(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Return active alerts with their text for the banner."""
    out = []
    for row in rows:
        unit = UNITS.get(row["rule"], "")
        value, threshold = describe(row["value"], unit), describe(row["threshold"], unit)
        detail = f"· {row['detail']}" if row.get("detail") else ""
        out.append({"rule": row["rule"], "title": TITLES.get(row["rule"], row["rule"]),
                    "state": row["state"], "since": row["since"], "value": row["value"],
                    "threshold": row["threshold"],
                    "text": f"{TITLES.get(row['rule'], row['rule'])}: {value}, "
                            f"threshold {threshold} {detail}".rstrip()})
    return out


def build(raw: Raw) -> dict[str, Any]:
    """Return the whole metrics document of a window."""
    bins = _bins(raw.window, raw.now)
    span_s = raw.now - bins[0]
    series = _series(raw, bins)
    limiter_429 = sum(r["rate_limited"] or 0 for r in raw.limiter)
    totals = summary(window_totals(raw.rollups), span_s, limiter_429)
    totals["throughput_now_per_min"] = _r(series["succeeded_per_min"][-1]
                                          + series["failed_per_min"][-1], 2)
    hists: dict[str, dict[int, int]] = defaultdict(dict)
    for _, stage, bucket, count in raw.latency:
        hists[stage][bucket] = hists[stage].get(bucket, 0) + count
    queue_table = _queue_table(raw)
    backlog = [q["depth"] for q in queue_table if q["name"] in raw.backlog_queues]
    known = [d for d in backlog if d is not None]
    pools = {pool: [v for v in values if v is not None]
             for pool, values in series["limiter_util_pct"].items()}
    return {
        "namespace": raw.namespace, "window": raw.window.name, "step_s": raw.window.res,
        "span_s": round(span_s, 1), "generated_at": raw.now,
        "totals": totals,
        "latency_ms": {stage: percentiles(hists.get(stage, {})) for stage in STAGES},
        "tier_mix": {t: int(sum(v)) for t, v in series["tiers"].items()},
        "backlog": sum(known) if known else None,
        "queues": queue_table,
        "workers": {"online": len(raw.workers),
                    "concurrency": sum(w["concurrency"] or 0 for w in raw.workers),
                    "in_flight": sum(w["in_flight"] or 0 for w in raw.workers),
                    "list": raw.workers},
        "limiter": {pool: {"util_pct_avg": _r(sum(v) / len(v), 1) if v else None,
                           "util_pct_last": v[-1] if v else None}
                    for pool, v in pools.items()},
        "tenants": [{k: (_r(v, 6) if isinstance(v, float) else v) for k, v in t.items()}
                    for t in raw.tenants],
        "scale_events": raw.scale_events,
        "alerts": alert_list(raw.alerts),
        "series": series,
    }
