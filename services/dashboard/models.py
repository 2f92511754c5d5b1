"""The dashboard's own tables (all prefixed `dash_`), next to the results store's."""

from __future__ import annotations

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import BigInteger, Engine, Float, Index, Integer, SmallInteger, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.common import store


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)

def create_tables(engine: Engine) -> None:
    """Create the dashboard's tables and the results store's, if missing."""
    store.create_tables(engine, db.metadata, store.metadata)


# Rollups are kept at three resolutions so any window reads a few thousand rows at most:
# 15 min and 1 h windows read minutes, 24 h reads quarter hours, 7 d reads hours.
RESOLUTIONS: tuple[int, ...] = (60, 900, 3600)


class Rollup(db.Model):  # type: ignore[name-defined,misc]
    """Task counts, cost, tokens, cache hits and failures per time bin and dimension."""

    __tablename__ = "dash_rollups"

    res: Mapped[int] = mapped_column(Integer, primary_key=True)
    ts: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # bin start, epoch seconds
    tenant: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(64), primary_key=True)
    tier: Mapped[str] = mapped_column(String(16), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)  # "-" for event counts
    count: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    saved_cache_usd: Mapped[float] = mapped_column(Float, default=0.0)
    saved_tiering_usd: Mapped[float] = mapped_column(Float, default=0.0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_exact: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_semantic: Mapped[int] = mapped_column(BigInteger, default=0)
    retries: Mapped[int] = mapped_column(BigInteger, default=0)
    dead: Mapped[int] = mapped_column(BigInteger, default=0)
    # No longer added to: 429s come per pool from `limiter.stats` (LimiterStat.rate_limited).
    # Kept so that rows stored before still read.
    rate_limited: Mapped[int] = mapped_column(BigInteger, default=0)
    routed: Mapped[int] = mapped_column(BigInteger, default=0)
    verified: Mapped[int] = mapped_column(BigInteger, default=0)
    verify_agreed: Mapped[int] = mapped_column(BigInteger, default=0)


class LatencyBucket(db.Model):  # type: ignore[name-defined,misc]
    """How many tasks of a time bin fell in one latency bucket of one stage."""

    __tablename__ = "dash_latency"

    res: Mapped[int] = mapped_column(Integer, primary_key=True)
    ts: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    stage: Mapped[str] = mapped_column(String(8), primary_key=True)  # queue | llm | total
    bucket: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)


class LimiterStat(db.Model):  # type: ignore[name-defined,misc]
    """Shared-limiter utilisation and its counters per time bin and pool."""

    __tablename__ = "dash_limiter"

    res: Mapped[int] = mapped_column(Integer, primary_key=True)
    ts: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    pool: Mapped[str] = mapped_column(String(64), primary_key=True)
    samples: Mapped[int] = mapped_column(BigInteger, default=0)
    util_sum: Mapped[float] = mapped_column(Float, default=0.0)
    util_max: Mapped[float] = mapped_column(Float, default=0.0)
    grants: Mapped[int] = mapped_column(BigInteger, default=0)
    waits: Mapped[int] = mapped_column(BigInteger, default=0)
    holds: Mapped[int] = mapped_column(BigInteger, default=0)
    rate_limited: Mapped[int] = mapped_column(BigInteger, default=0)


class QueueStat(db.Model):  # type: ignore[name-defined,misc]
    """A queue's peak and last depth per time bin (kept: raw samples are pruned)."""

    __tablename__ = "dash_queue_stats"

    res: Mapped[int] = mapped_column(Integer, primary_key=True)
    ts: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    queue: Mapped[str] = mapped_column(String(255), primary_key=True)
    max_depth: Mapped[int] = mapped_column(BigInteger, default=0)
    last_depth: Mapped[int] = mapped_column(BigInteger, default=0)
    consumers: Mapped[int | None] = mapped_column(Integer, nullable=True)


class QueueSample(db.Model):  # type: ignore[name-defined,misc]
    """One depth reading of one queue (every few seconds; pruned after two days)."""

    __tablename__ = "dash_queue_samples"
    __table_args__ = (Index("ix_dash_queue_samples_ts", "ts"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ts: Mapped[float] = mapped_column(Float)
    queue: Mapped[str] = mapped_column(String(255))
    depth: Mapped[int] = mapped_column(BigInteger)  # ready messages
    unacked: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # management only
    consumers: Mapped[int | None] = mapped_column(Integer, nullable=True)
    source: Mapped[str] = mapped_column(String(16))  # amqp | management


class Worker(db.Model):  # type: ignore[name-defined,misc]
    """The last heartbeat of a worker process."""

    __tablename__ = "dash_workers"

    worker_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    last_seen: Mapped[float] = mapped_column(Float, index=True)
    service: Mapped[str] = mapped_column(String(64), default="")
    tiers: Mapped[str] = mapped_column(String(255), default="")
    in_flight: Mapped[int] = mapped_column(Integer, default=0)
    concurrency: Mapped[int] = mapped_column(Integer, default=0)
    pid: Mapped[int] = mapped_column(Integer, default=0)


class ScaleEvent(db.Model):  # type: ignore[name-defined,misc]
    """The autoscaler changed the worker count."""

    __tablename__ = "dash_scale_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ts: Mapped[float] = mapped_column(Float, index=True)
    direction: Mapped[str] = mapped_column(String(8))  # up | down
    from_count: Mapped[int] = mapped_column(Integer)
    to_count: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text, default="")


class Threshold(db.Model):  # type: ignore[name-defined,misc]
    """One alert setting edited in the UI (value JSON-encoded)."""

    __tablename__ = "dash_thresholds"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[float] = mapped_column(Float)


class AlertState(db.Model):  # type: ignore[name-defined,misc]
    """Where each alert rule's state machine stands."""

    __tablename__ = "dash_alert_state"

    rule: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    since: Mapped[float] = mapped_column(Float)
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    detail: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[float] = mapped_column(Float)


class AlertEvent(db.Model):  # type: ignore[name-defined,misc]
    """A state change of an alert rule (its history)."""

    __tablename__ = "dash_alert_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ts: Mapped[float] = mapped_column(Float, index=True)
    rule: Mapped[str] = mapped_column(String(64))
    from_state: Mapped[str] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    message: Mapped[str] = mapped_column(Text, default="")


class SessionSecret(db.Model):  # type: ignore[name-defined,misc]
    """The session-signing secret every gunicorn worker shares (one row, id 1)."""

    __tablename__ = "dash_secret"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    value: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[float] = mapped_column(Float)
