"""Gather one window's metrics document from the database."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.common.models import TIERS
from services.common.topology import Names
from services.dashboard import batch_metrics, queries, snapshot
from services.dashboard.cards import card_dicts
from services.dashboard.db_session import DbSession
from services.dashboard.queries import Window
from services.dashboard.self_hosting import GpuPlan
from services.dashboard.suggestion import suggest


def backlog_queues(names: Names) -> list[str]:
    """Return the queues whose ready messages are work not yet done.

    A tier's queue stands for the tier's whole backlog: the collector records it as the sum
    over the tier's own queue and every tenant lane (services.dashboard.sampler).
    """
    return [names.submit, names.tasks, *(names.work_queue(t) for t in TIERS)]


def window_metrics(session: DbSession, names: Names, window: Window, now: float,
                   tenant: str | None = None, limiter_rpm: int = 0,
                   batch_discounts: Mapping[str, float] | None = None,
                   gpu_plan: GpuPlan | None = None) -> dict[str, Any]:
    """Return the `/api/metrics` document for `window` ending at `now`."""
    start = window.start(now)
    displayed = names.monitored_queues()
    raw = snapshot.Raw(
        window=window, now=now, namespace=names.ns,
        rollups=queries.rollup_rows(session, window.res, start, tenant),
        latency=queries.latency_rows(session, window.res, start),
        queue_points=queries.queue_rows(session, window, now, displayed),
        latest=queries.latest_readings(session, now),
        queues=displayed, backlog_queues=backlog_queues(names),
        limiter=queries.limiter_rows(session, window.res, start),
        workers=queries.online_workers(session, now),
        scale_events=queries.scale_events(session, start),
        tenants=queries.top_tenants(session, window.res, start),
        alerts=queries.active_alerts(session))
    doc = snapshot.build(raw)
    doc["tenant"] = tenant
    suggested = suggest(doc, limiter_rpm)
    if suggested is not None:
        doc["suggested_workers"] = suggested
    batch_metrics.add_batching(doc, session, start, tenant, batch_discounts or {})
    batch_metrics.add_self_hosting(doc, gpu_plan)
    doc["cards"] = card_dicts(doc)
    return doc
