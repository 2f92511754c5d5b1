"""Write rollup increments, queue readings and prunes to SQL (SQLite or PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import ColumnElement, Table, case, delete
from sqlalchemy.orm import Session

from services.dashboard.models import (
    RESOLUTIONS,
    LatencyBucket,
    LimiterStat,
    QueueSample,
    QueueStat,
    Rollup,
    ScaleEvent,
    Worker,
)
from services.dashboard.rollup import Counts, Delta, LimiterFigures, bin_start

RAW_RETENTION_S = 2 * 24 * 3600  # raw queue samples and silent workers; rollups are kept


@dataclass(frozen=True)
class QueueReading:
    """One queue's depth as the sampler saw it."""

    queue: str
    depth: int
    consumers: int | None
    unacked: int | None = None
    source: str = "amqp"


SetClause = Callable[[Table, Any], dict[str, ColumnElement[Any]]]


def _upsert(session: Session, table: Table, rows: Sequence[dict[str, Any]],
            set_clause: SetClause) -> None:
    """Insert rows, or fold them into the existing row with the same primary key."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    insert: Any
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        raise RuntimeError(f"the dashboard supports SQLite and PostgreSQL, not {dialect}")
    stmt = insert(table)
    stmt = stmt.on_conflict_do_update(index_elements=list(table.primary_key.columns),
                                      set_=set_clause(table, stmt.excluded))
    session.execute(stmt, list(rows))


def _adding(*columns: str) -> SetClause:
    return lambda t, new: {c: t.c[c] + new[c] for c in columns}


def _greater(t: Table, new: Any, column: str) -> ColumnElement[Any]:
    return case((new[column] > t.c[column], new[column]), else_=t.c[column])


ROLLUP_SUMS = tuple(Counts.__dataclass_fields__)
LIMITER_SUMS = ("samples", "util_sum", "grants", "waits", "holds", "rate_limited")


def apply_delta(session: Session, delta: Delta) -> None:
    """Add a batch's increments onto the stored rows (the caller commits)."""
    # Sorted keys: concurrent writers lock rows in the same order and cannot deadlock.
    _upsert(session, Rollup.__table__, [
        {"res": k[0], "ts": k[1], "tenant": k[2], "kind": k[3], "tier": k[4], "status": k[5],
         **c.as_dict()} for k, c in sorted(delta.rollups.items())], _adding(*ROLLUP_SUMS))
    _upsert(session, LatencyBucket.__table__, [
        {"res": k[0], "ts": k[1], "stage": k[2], "bucket": k[3], "count": n}
        for k, n in sorted(delta.latency.items())], _adding("count"))
    _upsert(session, LimiterStat.__table__, [
        _limiter_row(k, f) for k, f in sorted(delta.limiter.items())],
        lambda t, new: {**_adding(*LIMITER_SUMS)(t, new),
                        "util_max": _greater(t, new, "util_max")})
    _upsert(session, Worker.__table__, [
        asdict(w) for _, w in sorted(delta.workers.items())],
        lambda t, new: {"last_seen": _greater(t, new, "last_seen"), "service": new.service,
                        "tiers": new.tiers, "in_flight": new.in_flight,
                        "concurrency": new.concurrency, "pid": new.pid})
    session.add_all(ScaleEvent(**asdict(s)) for s in delta.scaling)


def _limiter_row(key: tuple[int, int, str], figures: LimiterFigures) -> dict[str, Any]:
    return {"res": key[0], "ts": key[1], "pool": key[2], **asdict(figures)}


def record_readings(session: Session, ts: float, readings: Iterable[QueueReading]) -> None:
    """Store one sampling round: raw rows plus the per-bin peak and last depth."""
    readings = list(readings)
    session.add_all(QueueSample(ts=ts, queue=r.queue, depth=r.depth, unacked=r.unacked,
                                consumers=r.consumers, source=r.source) for r in readings)
    _upsert(session, QueueStat.__table__, [
        {"res": res, "ts": bin_start(ts, res), "queue": r.queue, "max_depth": r.depth,
         "last_depth": r.depth, "consumers": r.consumers}
        for res in RESOLUTIONS for r in sorted(readings, key=lambda r: r.queue)],
        lambda t, new: {"max_depth": _greater(t, new, "max_depth"),
                        "last_depth": new.last_depth, "consumers": new.consumers})


def prune(session: Session, now: float) -> None:
    """Delete raw samples and silent workers older than the raw retention."""
    cutoff = now - RAW_RETENTION_S
    session.execute(delete(QueueSample).where(QueueSample.ts < cutoff))
    session.execute(delete(Worker).where(Worker.last_seen < cutoff))
