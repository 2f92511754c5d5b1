"""The results store: one SQL row per task, written by ingest and the recorder.

A task is known by (tenant, id): two tenants may use the same id. Tables made before that
had `id` alone as their key; `make_engine` migrates them (see `migrate_tables`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy import (
    Column,
    Engine,
    Float,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    and_,
    create_engine,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from services.common.models import Result, Task

metadata = MetaData()

tasks = Table(
    "agentq_tasks",
    metadata,
    Column("id", String(64), nullable=False, index=True),
    Column("tenant", String(64), nullable=False, index=True),
    Column("kind", String(64), nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("task_json", Text, nullable=False),
    Column("created_at", Float, nullable=False, index=True),
    Column("finished_at", Float),
    Column("tier", String(16)),
    Column("model", String(128)),
    Column("cache", String(16)),
    Column("output", Text),
    Column("prompt_tokens", Integer),
    Column("completion_tokens", Integer),
    Column("cost_usd", Float),
    Column("cost_saved_usd", Float),
    Column("attempts", Integer),
    Column("latency_queue_ms", Float),
    Column("latency_llm_ms", Float),
    Column("latency_total_ms", Float),
    Column("error_code", String(64)),
    Column("error_message", Text),
    Column("route_reason", Text),
    Column("result_json", Text),
    PrimaryKeyConstraint("tenant", "id", name="agentq_tasks_pkey"),
)


# The batcher's claims (services.batcher.claims; docs/batches.md has the states): one row per
# deferrable task it holds, written before its message is acked and before any upload.
batch_claims = Table(
    "agentq_batch_claims",
    metadata,
    Column("tenant", String(64), nullable=False),
    Column("task_id", String(64), nullable=False),
    Column("custom_id", String(160), nullable=False, unique=True),
    Column("provider", String(64), nullable=False),
    Column("model", String(128), nullable=False),
    Column("tier", String(16), nullable=False),
    Column("state", String(16), nullable=False, index=True),
    Column("group_id", String(64), index=True),
    Column("batch_id", String(64)),
    Column("deadline_at", Float),
    Column("claimed_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("route_reason", Text, nullable=False, default=""),
    Column("task_json", Text, nullable=False),
    PrimaryKeyConstraint("tenant", "task_id", name="agentq_batch_claims_pkey"),
)

# One row per batch the batcher put together; group_id is chosen before the upload and sent
# as the batch's metadata, so a restart finds a batch whose creation it never heard back.
batches = Table(
    "agentq_batches",
    metadata,
    Column("group_id", String(64), primary_key=True),
    Column("provider", String(64), nullable=False),
    Column("model", String(128), nullable=False),
    Column("state", String(16), nullable=False, index=True),
    Column("batch_id", String(64)),
    Column("input_file_id", String(64)),
    Column("status", String(32)),
    Column("lines", Integer, nullable=False),
    Column("completed", Integer),
    Column("failed", Integer),
    Column("created_at", Float, nullable=False),
    Column("submitted_at", Float),
    Column("ended_at", Float),
)

def engine_url(url: str) -> str:
    """Point PostgreSQL URLs at psycopg 3, the driver agentq installs."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def make_engine(url: str) -> Engine:
    """Create the engine and the tables it needs."""
    url = engine_url(url)
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        # Several processes write one SQLite file: wait for the lock instead of failing.
        kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
    elif url.startswith("postgresql"):
        kwargs["connect_args"] = {"connect_timeout": 5}
    engine = create_engine(url, **kwargs)
    if url.startswith("sqlite"):
        from sqlalchemy import event

        @event.listens_for(engine, "connect")
        def _wal(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

    create_tables(engine)
    migrate_tables(engine)
    return engine


def create_tables(engine: Engine, *schemas: MetaData, attempts: int = 5) -> None:
    """Create the tables if missing; several services may race to do it at start-up."""
    for attempt in range(attempts):
        try:
            for schema in schemas or (metadata,):
                schema.create_all(engine, checkfirst=True)
            return
        except (OperationalError, ProgrammingError, IntegrityError):
            # Another process created a table between our check and our CREATE.
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def migrate_tables(engine: Engine) -> None:
    """Bring tables made by older versions up to date (today: the (tenant, id) key)."""
    from services.common.store_migration import key_by_tenant

    key_by_tenant(engine, tasks)


# A task is stored "accepted" and becomes "queued" once the broker has confirmed it: a row
# still "accepted" a while later is a task whose ingest died between the two steps, and a
# retry of its id (or the intake's sweeper) publishes it. Readers see both as "queued".
ACCEPTED = "accepted"
QUEUED_STATUSES = (ACCEPTED, "queued")


# A broker confirm takes milliseconds, and ingest gives up on one after a few seconds: an
# accepted row older than this was never published.
UNPUBLISHED_AFTER_S = 15.0


def is_unpublished(row: dict[str, Any], now: float) -> bool:
    """Return whether a stored task row was accepted and never confirmed by the broker."""
    return row["status"] == ACCEPTED and row["created_at"] < now - UNPUBLISHED_AFTER_S


def visible_status(status: str) -> str:
    """Return the status the API and the dashboard show for a stored one."""
    return "queued" if status == ACCEPTED else status


def insert_task(engine: Engine, task: Task) -> tuple[dict[str, Any], bool]:
    """Store a new task as accepted; for an id its tenant knows, the stored row and False."""
    row = {"id": task.id, "tenant": task.tenant, "kind": task.kind, "status": ACCEPTED,
           "task_json": task.model_dump_json(), "created_at": task.submitted_at or time.time()}
    try:
        with engine.begin() as conn:
            conn.execute(insert(tasks).values(**row))
        return row, True
    except IntegrityError:
        existing = get_task(engine, task.tenant, task.id)
        if existing is None:  # deleted between the two statements: store it now
            return insert_task(engine, task)
        return existing, False


def _is(tenant: str, task_id: str) -> Any:
    return and_(tasks.c.tenant == tenant, tasks.c.id == task_id)


def forget_task(engine: Engine, tenant: str, task_id: str) -> None:
    """Remove a task that could not be queued, so a retry of the same id is accepted."""
    with engine.begin() as conn:
        conn.execute(delete(tasks).where(_is(tenant, task_id), tasks.c.status == ACCEPTED))


def mark_queued(engine: Engine, tenant: str, task_id: str) -> None:
    """Record that the broker confirmed an accepted task (a later status is kept)."""
    with engine.begin() as conn:
        conn.execute(update(tasks).where(_is(tenant, task_id), tasks.c.status == ACCEPTED)
                     .values(status="queued"))


def unpublished_tasks(engine: Engine, accepted_before: float,
                      limit: int = 500) -> list[Task]:
    """Return tasks stored but never confirmed by the broker, accepted before a time."""
    with engine.connect() as conn:
        rows = conn.execute(select(tasks.c.task_json)
                            .where(tasks.c.status == ACCEPTED,
                                   tasks.c.created_at < accepted_before)
                            .order_by(tasks.c.created_at).limit(limit)).scalars().all()
    return [Task.model_validate_json(row) for row in rows]


def get_task(engine: Engine, tenant: str, task_id: str) -> dict[str, Any] | None:
    """Return the row of a tenant's task, or None."""
    with engine.connect() as conn:
        row = conn.execute(select(tasks).where(_is(tenant, task_id))).mappings().first()
    return dict(row) if row is not None else None


def find_tasks(engine: Engine, task_id: str, limit: int = 10) -> list[dict[str, Any]]:
    """Return the rows of every tenant's task with this id (at most `limit`)."""
    with engine.connect() as conn:
        rows = conn.execute(select(tasks).where(tasks.c.id == task_id)
                            .order_by(tasks.c.tenant).limit(limit)).mappings().all()
    return [dict(row) for row in rows]


def _result_columns(result: Result) -> dict[str, Any]:
    return {
        "status": result.status, "finished_at": result.finished_at, "tier": result.tier,
        "model": result.model, "cache": result.cache, "output": result.output,
        "prompt_tokens": result.usage.prompt_tokens,
        "completion_tokens": result.usage.completion_tokens,
        "cost_usd": result.cost_usd, "cost_saved_usd": result.cost_saved_usd,
        "attempts": result.attempts, "latency_queue_ms": result.latency_ms.queue,
        "latency_llm_ms": result.latency_ms.llm, "latency_total_ms": result.latency_ms.total,
        "error_code": result.error.code if result.error else None,
        "error_message": result.error.message if result.error else None,
        "route_reason": result.route_reason, "result_json": result.model_dump_json(),
    }


def record_results(engine: Engine, results: Iterable[Result]) -> None:
    """Write results onto their tasks in one transaction (a task unknown here is added)."""
    with engine.begin() as conn:
        for result in results:
            columns = _result_columns(result)
            updated = conn.execute(update(tasks).where(_is(result.tenant, result.task_id))
                                   .values(**columns))
            if updated.rowcount == 0:
                conn.execute(insert(tasks).values(
                    id=result.task_id, tenant=result.tenant, kind=result.kind or "chat",
                    task_json="{}", created_at=result.finished_at, **columns))


def mark_running(engine: Engine, task_keys: Iterable[tuple[str, str]]) -> None:
    """Mark queued tasks, given as (tenant, id), as running (a finished one keeps its status)."""
    by_tenant: dict[str, set[str]] = {}
    for tenant, task_id in task_keys:
        by_tenant.setdefault(tenant, set()).add(task_id)
    if not by_tenant:
        return
    with engine.begin() as conn:
        for tenant, ids in by_tenant.items():
            conn.execute(update(tasks).where(tasks.c.tenant == tenant, tasks.c.id.in_(ids),
                                             tasks.c.status.in_(QUEUED_STATUSES))
                         .values(status="running"))


REPLAYED = "replayed"  # error_code of a task reopened by a dead-letter replay, until it ends


def reopen_for_replay(engine: Engine, task: Task, letter: str) -> str:
    """Reopen a dead task for a replay of dead letter `letter` (its fingerprint).

    Returns "reopened" (publish it), "duplicate" (a replay of another letter of this task is
    still pending: drop this one) or "succeeded" (finished meanwhile: drop it). The same
    letter again reopens: the replay that marked it died before acknowledging it, so its
    publish may never have happened.
    """
    mark = f"replay of dead letter {letter}"
    for _ in range(5):  # a concurrent change of the row: look again
        row = get_task(engine, task.tenant, task.id)
        if row is None:
            with engine.begin() as conn:
                try:
                    conn.execute(insert(tasks).values(
                        id=task.id, tenant=task.tenant, kind=task.kind, status="queued",
                        task_json=task.model_dump_json(), error_code=REPLAYED,
                        error_message=mark, created_at=task.submitted_at or time.time()))
                except IntegrityError:
                    continue
            return "reopened"
        if row["status"] == "succeeded":
            return "succeeded"
        pending = row["error_code"] == REPLAYED and row["status"] != "failed"
        if pending:
            return "reopened" if row["error_message"] == mark else "duplicate"
        with engine.begin() as conn:
            changed = conn.execute(
                update(tasks).where(_is(task.tenant, task.id), tasks.c.status == row["status"],
                                    tasks.c.error_code.is_(None) if row["error_code"] is None
                                    else tasks.c.error_code == row["error_code"])
                .values(status="queued", error_code=REPLAYED, error_message=mark,
                        finished_at=None)).rowcount
        if changed:
            return "reopened"
    raise RuntimeError(f"task {task.tenant}/{task.id} kept changing under a replay")
