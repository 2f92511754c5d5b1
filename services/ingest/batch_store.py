"""The SQL tables of agentq's own Batch API: uploaded files, batches and their lines.

Named `agentq_user_*`: the batches users send in, apart from the batcher's `agentq_batches`
(the batches agentq sends to providers).

Kept in the results database, not on a local disk, so every ingest process serves every
file and batch. A batch and all its lines are written in one transaction before any line
is accepted as a task: an ingest that dies midway leaves lines marked unaccepted, and the
next one to lease the batch accepts the rest (`services.ingest.batch_accept`).
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Engine,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    and_,
    case,
    func,
    insert,
    or_,
    select,
    update,
)

from services.common.models import Task
from services.common.store import create_tables
from services.common.store import tasks as task_rows
from services.ingest.batch_results import TERMINAL, Progress

metadata = MetaData()

files = Table(
    "agentq_user_files", metadata,
    Column("id", String(64), primary_key=True),
    Column("owner", String(64), nullable=False, index=True),  # the caller's tenant, or "*"
    Column("purpose", String(16), nullable=False),
    Column("filename", String(255), nullable=False),
    Column("bytes", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("content", LargeBinary, nullable=False),
)

batches = Table(
    "agentq_user_batches", metadata,
    Column("id", String(64), primary_key=True),
    Column("owner", String(64), nullable=False, index=True),
    Column("tenant", String(64), nullable=False),  # whose tasks its lines become
    Column("input_file_id", String(64), nullable=False),
    Column("endpoint", String(64), nullable=False),
    Column("completion_window", String(16), nullable=False),
    Column("metadata_json", Text),
    Column("status", String(16), nullable=False, index=True),
    Column("total", Integer, nullable=False),
    Column("completed", Integer),  # final request counts, set with the result files
    Column("failed", Integer),
    Column("created_at", Float, nullable=False, index=True),
    Column("expires_at", Float, nullable=False),
    Column("in_progress_at", Float),
    Column("finalizing_at", Float),
    Column("completed_at", Float),
    Column("cancelling_at", Float),
    Column("cancelled_at", Float),
    Column("output_file_id", String(64)),
    Column("error_file_id", String(64)),
    Column("lease_until", Float, nullable=False, default=0.0),  # an acceptor's claim
)

lines = Table(
    "agentq_user_batch_lines", metadata,
    Column("batch_id", String(64), nullable=False),
    Column("line", Integer, nullable=False),
    Column("custom_id", String(512), nullable=False),
    Column("tenant", String(64), nullable=False),
    Column("task_id", String(64), nullable=False),
    Column("task_json", Text, nullable=False),
    Column("accepted", Boolean, nullable=False, default=False),
    PrimaryKeyConstraint("batch_id", "line", name="agentq_user_batch_lines_pkey"),
)


def create_batch_tables(engine: Engine) -> None:
    """Create the Batch API's tables if missing (ingest's start-up)."""
    create_tables(engine, metadata)


def _owned(table: Table, ident: str, owner: str | None) -> Any:
    clause = table.c.id == ident
    return clause if owner is None else and_(clause, table.c.owner == owner)


def add_file(engine: Engine, row: dict[str, Any]) -> None:
    """Store a file row (id, owner, purpose, filename, bytes, created_at, content)."""
    with engine.begin() as conn:
        conn.execute(insert(files).values(**row))


def get_file(engine: Engine, file_id: str, owner: str | None,
             content: bool = False) -> dict[str, Any] | None:
    """Return a file row the owner may see (None = any owner), with its bytes if asked."""
    columns = [c for c in files.c if content or c.name != "content"]
    with engine.connect() as conn:
        row = conn.execute(select(*columns).where(_owned(files, file_id, owner))).mappings().first()
    return dict(row) if row is not None else None


def insert_batch(engine: Engine, row: dict[str, Any],
                 tasks: list[tuple[str, Task]]) -> None:
    """Record a batch and every line (custom_id, task) in one transaction, unaccepted."""
    with engine.begin() as conn:
        conn.execute(insert(batches).values(**row, lease_until=0.0))
        if tasks:
            conn.execute(insert(lines), [
                {"batch_id": row["id"], "line": index, "custom_id": custom_id,
                 "tenant": task.tenant, "task_id": task.id,
                 "task_json": task.model_dump_json(), "accepted": False}
                for index, (custom_id, task) in enumerate(tasks)])


def get_batch(engine: Engine, batch_id: str, owner: str | None) -> dict[str, Any] | None:
    """Return a batch row the owner may see, its metadata decoded."""
    with engine.connect() as conn:
        row = conn.execute(select(batches).where(_owned(batches, batch_id, owner))
                           ).mappings().first()
    return _decoded(row) if row is not None else None


def _decoded(row: Any) -> dict[str, Any]:
    found = dict(row)
    found["metadata"] = json.loads(found["metadata_json"]) if found["metadata_json"] else None
    return found


def page_batches(engine: Engine, owner: str | None, limit: int,
                 after: str | None) -> tuple[list[dict[str, Any]], bool]:
    """Return the owner's batches after `after`, newest first, and whether more remain."""
    query = select(batches)
    if owner is not None:
        query = query.where(batches.c.owner == owner)
    with engine.connect() as conn:
        if after is not None:
            cursor = conn.execute(select(batches.c.created_at, batches.c.id)
                                  .where(_owned(batches, after, owner))).first()
            if cursor is None:
                return [], False
            query = query.where(or_(batches.c.created_at < cursor[0],
                                    and_(batches.c.created_at == cursor[0],
                                         batches.c.id < cursor[1])))
        rows = conn.execute(query.order_by(batches.c.created_at.desc(), batches.c.id.desc())
                            .limit(limit + 1)).mappings().all()
    return [_decoded(row) for row in rows[:limit]], len(rows) > limit


def _with_tasks() -> Any:
    # Each line's task row, if it was accepted: its status and Result are the line's.
    return lines.outerjoin(task_rows, and_(task_rows.c.tenant == lines.c.tenant,
                                           task_rows.c.id == lines.c.task_id))


def progress(engine: Engine, batch_id: str) -> Progress:
    """Count a batch's lines: accepted as tasks, and finished by the pipeline."""

    def count(condition: Any) -> Any:
        return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)

    query = select(func.count(), count(lines.c.accepted.is_(True)),
                   count(task_rows.c.status == "succeeded"),
                   count(task_rows.c.status == "failed")
                   ).select_from(_with_tasks()).where(lines.c.batch_id == batch_id)
    with engine.connect() as conn:
        total, accepted, succeeded, failed = conn.execute(query).one()
    return Progress(int(total), int(accepted), int(succeeded), int(failed))


def finished_lines(engine: Engine, batch_id: str) -> list[dict[str, Any]]:
    """Return every line in file order with its task's status and Result (None if never
    accepted)."""
    query = (select(lines.c.custom_id, lines.c.task_id, lines.c.accepted, task_rows.c.status,
                    task_rows.c.result_json)
             .select_from(_with_tasks()).where(lines.c.batch_id == batch_id).order_by(lines.c.line))
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(query).mappings().all()]


def finalize(engine: Engine, batch_id: str, values: dict[str, Any],
             new_files: list[dict[str, Any]]) -> bool:
    """Write a batch's end status and its result files, once; False if another process
    finalized it first (then nothing is written)."""
    with engine.begin() as conn:
        done = conn.execute(update(batches).where(batches.c.id == batch_id,
                                                  batches.c.status.not_in(TERMINAL))
                            .values(**values))
        if done.rowcount != 1:
            return False  # the transaction ends without the files
        for row in new_files:
            conn.execute(insert(files).values(**row))
    return True


def cancel(engine: Engine, batch_id: str, now: float) -> bool:
    """Mark a running batch cancelling; False once it has ended."""
    with engine.begin() as conn:
        changed = conn.execute(update(batches).where(
            batches.c.id == batch_id, batches.c.status.in_(("validating", "in_progress")))
            .values(status="cancelling", cancelling_at=now))
        if changed.rowcount == 1:
            return True
        status = conn.execute(select(batches.c.status).where(batches.c.id == batch_id)).scalar()
    return status == "cancelling"


def pending_batches(engine: Engine, now: float, limit: int = 10) -> list[str]:
    """Return batches with lines still to accept and no live lease."""
    with engine.connect() as conn:
        return list(conn.execute(select(batches.c.id).where(
            batches.c.status == "validating", batches.c.lease_until < now)
            .order_by(batches.c.created_at).limit(limit)).scalars().all())


def lease(engine: Engine, batch_id: str, now: float, until: float,
          held: bool = False) -> bool:
    """Claim (or, `held`, extend) the right to accept a validating batch's lines."""
    query = update(batches).where(batches.c.id == batch_id, batches.c.status == "validating")
    if not held:
        query = query.where(batches.c.lease_until < now)
    with engine.begin() as conn:
        return bool(conn.execute(query.values(lease_until=until)).rowcount == 1)


def release(engine: Engine, batch_id: str, in_progress_at: float | None = None) -> None:
    """Give a batch's lease up; with `in_progress_at`, every line is accepted."""
    values: dict[str, Any] = {"lease_until": 0.0}
    if in_progress_at is not None:
        values["in_progress_at"] = in_progress_at
    query = update(batches).where(batches.c.id == batch_id)
    with engine.begin() as conn:
        conn.execute(query.values(**values))
        if in_progress_at is not None:
            conn.execute(query.where(batches.c.status == "validating")
                         .values(status="in_progress"))


def unaccepted(engine: Engine, batch_id: str, limit: int) -> list[tuple[int, Task]]:
    """Return the next lines of a batch not yet accepted, with their tasks."""
    with engine.connect() as conn:
        rows = conn.execute(select(lines.c.line, lines.c.task_json).where(
            lines.c.batch_id == batch_id, lines.c.accepted.is_(False))
            .order_by(lines.c.line).limit(limit)).all()
    return [(int(line), Task.model_validate_json(raw)) for line, raw in rows]


def mark_accepted(engine: Engine, batch_id: str, numbers: list[int]) -> None:
    """Record that these lines' tasks were accepted (stored and queued)."""
    with engine.begin() as conn:
        conn.execute(update(lines).where(lines.c.batch_id == batch_id,
                                         lines.c.line.in_(numbers)).values(accepted=True))
