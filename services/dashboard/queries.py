"""Read the rollups back, aggregated in SQL, for a window of time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Float, Integer, case, cast, func, select

from services.dashboard.db_session import DbSession
from services.dashboard.models import (
    AlertState,
    LatencyBucket,
    LimiterStat,
    QueueSample,
    QueueStat,
    Rollup,
    ScaleEvent,
    Worker,
)
from services.dashboard.rollup import bin_start

SUMMED = ("count", "cost_usd", "saved_cache_usd", "saved_tiering_usd", "prompt_tokens",
          "completion_tokens", "cache_exact", "cache_semantic", "retries", "dead",
          "rate_limited", "routed", "verified", "verify_agreed")
WORKER_SILENCE_S = 15.0  # heartbeats come every 5 s: three missed ones mean gone
SAMPLE_FRESH_S = 30.0  # an older queue reading is shown as unknown
RAW_QUEUE_WINDOW_S = 900  # up to this window, queue depth charts use the raw 5 s samples


@dataclass(frozen=True)
class Window:
    """A named time window and the resolution it is read at."""

    name: str
    seconds: int
    res: int

    def start(self, now: float) -> int:
        """Return the first bin of the window (the one holding `now - seconds`)."""
        return bin_start(now - self.seconds, self.res)


WINDOWS: dict[str, Window] = {w.name: w for w in (
    Window("15m", 900, 60), Window("1h", 3600, 60), Window("24h", 86_400, 900),
    Window("7d", 7 * 86_400, 3600))}
DEFAULT_WINDOW = "1h"


def total(column: Any) -> Any:
    """SUM that comes back as int or float on every database (PostgreSQL sums to numeric)."""
    summed = func.coalesce(func.sum(column), 0)
    is_int = isinstance(getattr(column, "type", None), Integer)
    return cast(summed, BigInteger) if is_int else cast(summed, Float)


def _sums(*extra: Any) -> list[Any]:
    return [*extra, *(total(getattr(Rollup, c)).label(c) for c in SUMMED)]


def rollup_rows(session: DbSession, res: int, start: int,
                tenant: str | None = None) -> list[dict[str, Any]]:
    """Return summed figures per (bin, status, tier)."""
    query = (select(*_sums(Rollup.ts, Rollup.status, Rollup.tier))
             .where(Rollup.res == res, Rollup.ts >= start)
             .group_by(Rollup.ts, Rollup.status, Rollup.tier))
    if tenant:
        query = query.where(Rollup.tenant == tenant)
    return [dict(r) for r in session.execute(query).mappings()]


def totals(session: DbSession, res: int, start: int, end: float | None = None
           ) -> dict[str, Any]:
    """Return figures summed over [start, end) plus the failed-task count."""
    failed = total(case((Rollup.status == "failed", Rollup.count), else_=0)).label("failed")
    query = select(*_sums(failed)).where(Rollup.res == res, Rollup.ts >= start)
    if end is not None:
        query = query.where(Rollup.ts < end)
    row = session.execute(query).mappings().one()
    return dict(row)


def top_tenants(session: DbSession, res: int, start: int, limit: int = 10
                ) -> list[dict[str, Any]]:
    """Return the tenants with the highest spend in the window."""
    failed = total(case((Rollup.status == "failed", Rollup.count), else_=0)).label("failed")
    saved = total(Rollup.saved_cache_usd + Rollup.saved_tiering_usd).label("saved_usd")
    query = (select(Rollup.tenant, total(Rollup.count).label("tasks"), failed,
                    total(Rollup.cost_usd).label("cost_usd"), saved)
             .where(Rollup.res == res, Rollup.ts >= start, Rollup.tenant != "-")
             .group_by(Rollup.tenant)
             .order_by(func.sum(Rollup.cost_usd).desc(), func.sum(Rollup.count).desc())
             .limit(limit))
    return [dict(r) for r in session.execute(query).mappings()]


def latency_rows(session: DbSession, res: int, start: int,
                 stages: tuple[str, ...] | None = None) -> list[tuple[int, str, int, int]]:
    """Return (bin, stage, bucket, count) for the window."""
    query = (select(LatencyBucket.ts, LatencyBucket.stage, LatencyBucket.bucket,
                    total(LatencyBucket.count))
             .where(LatencyBucket.res == res, LatencyBucket.ts >= start)
             .group_by(LatencyBucket.ts, LatencyBucket.stage, LatencyBucket.bucket))
    if stages:
        query = query.where(LatencyBucket.stage.in_(stages))
    return [(int(t), s, int(b), int(n)) for t, s, b, n in session.execute(query)]


def queue_rows(session: DbSession, window: Window, now: float, queues: list[str]
               ) -> list[tuple[float, str, int]]:
    """Return (time, queue, depth): raw samples for short windows, bin peaks for long ones."""
    if window.seconds <= RAW_QUEUE_WINDOW_S:
        query = (select(QueueSample.ts, QueueSample.queue, QueueSample.depth)
                 .where(QueueSample.ts >= now - window.seconds, QueueSample.queue.in_(queues))
                 .order_by(QueueSample.ts))
    else:
        query = (select(QueueStat.ts, QueueStat.queue, QueueStat.max_depth)
                 .where(QueueStat.res == window.res, QueueStat.ts >= window.start(now),
                        QueueStat.queue.in_(queues))
                 .order_by(QueueStat.ts))
    return [(float(t), q, int(d)) for t, q, d in session.execute(query)]


def latest_readings(session: DbSession, now: float) -> dict[str, dict[str, Any]]:
    """Return each queue's newest reading of the last half minute."""
    query = (select(QueueSample.ts, QueueSample.queue, QueueSample.depth, QueueSample.unacked,
                    QueueSample.consumers, QueueSample.source)
             .where(QueueSample.ts >= now - SAMPLE_FRESH_S).order_by(QueueSample.ts))
    return {r["queue"]: dict(r) for r in session.execute(query).mappings()}


def last_sample_at(session: DbSession) -> float | None:
    """Return when a queue depth was last read from the broker (None: never)."""
    found = session.scalar(select(func.max(QueueSample.ts)))
    return float(found) if found is not None else None


def depth_history(session: DbSession, queues: list[str], since: float
                  ) -> list[tuple[float, int]]:
    """Return (round time, summed depth of `queues`) per sampling round since `since`."""
    query = (select(QueueSample.ts, total(QueueSample.depth))
             .where(QueueSample.ts >= since, QueueSample.queue.in_(queues))
             .group_by(QueueSample.ts).order_by(QueueSample.ts))
    return [(float(t), int(d)) for t, d in session.execute(query)]


def limiter_rows(session: DbSession, res: int, start: int) -> list[dict[str, Any]]:
    """Return summed limiter figures per (bin, pool)."""
    query = (select(LimiterStat.ts, LimiterStat.pool,
                    total(LimiterStat.samples).label("samples"),
                    total(LimiterStat.util_sum).label("util_sum"),
                    func.max(LimiterStat.util_max).label("util_max"),
                    total(LimiterStat.grants).label("grants"),
                    total(LimiterStat.waits).label("waits"),
                    total(LimiterStat.holds).label("holds"),
                    total(LimiterStat.rate_limited).label("rate_limited"))
             .where(LimiterStat.res == res, LimiterStat.ts >= start)
             .group_by(LimiterStat.ts, LimiterStat.pool))
    return [dict(r) for r in session.execute(query).mappings()]


def online_workers(session: DbSession, now: float) -> list[dict[str, Any]]:
    """Return the workers heard from in the last 15 seconds."""
    query = (select(Worker.worker_id, Worker.last_seen, Worker.tiers, Worker.in_flight,
                    Worker.concurrency, Worker.pid)
             .where(Worker.last_seen >= now - WORKER_SILENCE_S).order_by(Worker.worker_id))
    return [dict(r) for r in session.execute(query).mappings()]


def scale_events(session: DbSession, since: float, limit: int = 200) -> list[dict[str, Any]]:
    """Return the autoscaler's changes since `since`, newest first."""
    query = (select(ScaleEvent.ts, ScaleEvent.direction, ScaleEvent.from_count,
                    ScaleEvent.to_count, ScaleEvent.reason)
             .where(ScaleEvent.ts >= since).order_by(ScaleEvent.ts.desc()).limit(limit))
    return [dict(r) for r in session.execute(query).mappings()]


def active_alerts(session: DbSession) -> list[dict[str, Any]]:
    """Return the alerts a banner shows (firing, or firing and resolving)."""
    query = (select(AlertState.rule, AlertState.state, AlertState.since, AlertState.value,
                    AlertState.threshold, AlertState.detail)
             .where(AlertState.state.in_(("firing", "resolving"))).order_by(AlertState.since))
    return [dict(r) for r in session.execute(query).mappings()]


def has_data_before(session: DbSession, ts: float) -> bool:
    """Tell whether rollups reach back before `ts` (a baseline needs a full history)."""
    query = select(Rollup.ts).where(Rollup.res == 3600, Rollup.ts < ts).limit(1)
    return session.execute(query).first() is not None
