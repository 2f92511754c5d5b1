"""Expose the dashboard's view of the pipeline as Prometheus gauges, read at scrape time.

Reading the database on each scrape keeps every gunicorn worker's answer identical, and lets
Grafana plot the same figures the dashboard shows.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from services.common.topology import Names
from services.dashboard import queries
from services.dashboard.db_session import DbSession
from services.dashboard.histogram import QUANTILES, STAGES, merge, percentile
from services.dashboard.rollup import bin_start
from services.dashboard.snapshot import window_totals

RECENT_S = 300  # rates and percentiles cover the last 5 minutes


def _gauge(registry: CollectorRegistry, name: str, text: str,
           labels: tuple[str, ...] = ()) -> Gauge:
    return Gauge(name, text, labels, registry=registry)


def _queues(registry: CollectorRegistry, session: DbSession, now: float) -> None:
    depth = _gauge(registry, "agentq_queue_depth", "Ready messages per queue", ("queue",))
    unacked = _gauge(registry, "agentq_queue_unacked",
                     "Delivered, unacknowledged messages (management API only)", ("queue",))
    consumers = _gauge(registry, "agentq_queue_consumers", "Consumers per queue", ("queue",))
    for name, reading in queries.latest_readings(session, now).items():
        depth.labels(name).set(reading["depth"])
        if reading["unacked"] is not None:
            unacked.labels(name).set(reading["unacked"])
        if reading["consumers"] is not None:
            consumers.labels(name).set(reading["consumers"])


def _rates(registry: CollectorRegistry, rows: list[dict[str, Any]], sums: dict[str, float],
           minutes: float) -> None:
    per_min = _gauge(registry, "agentq_tasks_per_minute", "Finished tasks per minute (5 min)",
                     ("status",))
    for status in ("succeeded", "failed"):
        per_min.labels(status).set(sums.get(status, 0) / minutes)
    by_tier: dict[str, float] = {}
    for row in rows:
        if row["status"] in ("succeeded", "failed"):
            by_tier[row["tier"]] = by_tier.get(row["tier"], 0) + row["count"]
    tiers = _gauge(registry, "agentq_tier_tasks_per_minute", "Finished tasks per minute by tier",
                   ("tier",))
    for tier, count in by_tier.items():
        tiers.labels(tier).set(count / minutes)
    tasks = sums.get("count", 0)
    hits = sums.get("cache_exact", 0) + sums.get("cache_semantic", 0)
    saved = sums.get("saved_cache_usd", 0) + sums.get("saved_tiering_usd", 0)
    for name, text, value in (
            ("agentq_error_ratio", "Failed / finished tasks (5 min)",
             sums.get("failed", 0) / tasks if tasks else 0),
            ("agentq_cache_hit_ratio", "Cache hits / finished tasks (5 min)",
             hits / tasks if tasks else 0),
            ("agentq_cost_usd_per_hour", "Spend rate over the last 5 min",
             sums.get("cost_usd", 0) / minutes * 60),
            ("agentq_saved_usd_per_hour", "Savings rate (cache and tiering)", saved / minutes * 60),
            ("agentq_retries_per_minute", "Retries scheduled per minute",
             sums.get("retries", 0) / minutes),
            ("agentq_dead_letters_per_minute", "Tasks dead-lettered per minute",
             sums.get("dead", 0) / minutes)):
        _gauge(registry, name, text).set(value)


def _limiter(registry: CollectorRegistry, limiter: list[dict[str, Any]],
             sums: dict[str, float], minutes: float) -> None:
    limited = max(sums.get("rate_limited", 0), sum(r["rate_limited"] or 0 for r in limiter))
    _gauge(registry, "agentq_rate_limited_per_minute", "Provider 429s per minute").set(
        limited / minutes)
    util = _gauge(registry, "agentq_limiter_utilisation_ratio",
                  "Shared limiter: used / allowed (busier of RPM and TPM)", ("pool",))
    pools: dict[str, tuple[float, int]] = {}
    for row in limiter:
        total, samples = pools.get(row["pool"], (0.0, 0))
        pools[row["pool"]] = (total + (row["util_sum"] or 0), samples + (row["samples"] or 0))
    for pool, (total, samples) in pools.items():
        util.labels(pool).set(total / samples if samples else 0)


def _latency(registry: CollectorRegistry, rows: list[tuple[int, str, int, int]]) -> None:
    latency = _gauge(registry, "agentq_latency_ms", "Task latency percentiles (5 min)",
                     ("stage", "quantile"))
    hists: dict[str, list[dict[int, int]]] = {}
    for _, stage, bucket, count in rows:
        hists.setdefault(stage, []).append({bucket: count})
    for stage in STAGES:
        merged = merge(hists.get(stage, []))
        for q in QUANTILES:
            value = percentile(merged, q)
            if value is not None:
                latency.labels(stage, str(q)).set(value)


def _tasks(registry: CollectorRegistry, session: DbSession, now: float) -> None:
    start = bin_start(now - RECENT_S, 60)
    minutes = max(now - start, 1.0) / 60
    rows = queries.rollup_rows(session, 60, start)
    sums = window_totals(rows)
    _rates(registry, rows, sums, minutes)
    _limiter(registry, queries.limiter_rows(session, 60, start), sums, minutes)
    _latency(registry, queries.latency_rows(session, 60, start))


def render(session: DbSession, names: Names, now: float) -> bytes:
    """Return the Prometheus text exposition of the dashboard's figures."""
    registry = CollectorRegistry(auto_describe=False)
    _queues(registry, session, now)
    _tasks(registry, session, now)
    workers = queries.online_workers(session, now)
    _gauge(registry, "agentq_workers_online", "Worker processes heard from in 15 s").set(
        len(workers))
    _gauge(registry, "agentq_worker_slots", "Task slots of the online workers").set(
        sum(w["concurrency"] or 0 for w in workers))
    _gauge(registry, "agentq_worker_in_flight", "Tasks in hand across workers").set(
        sum(w["in_flight"] or 0 for w in workers))
    firing = _gauge(registry, "agentq_alert_firing", "1 while an alert rule fires", ("rule",))
    for alert in queries.active_alerts(session):
        firing.labels(alert["rule"]).set(1)
    _gauge(registry, "agentq_dashboard_info", "The namespace this dashboard watches",
           ("namespace",)).labels(names.ns).set(1)
    return generate_latest(registry)
