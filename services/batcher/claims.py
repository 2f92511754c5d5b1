"""The batcher's claims and batches in SQL (tables in services.common.store).

Blocking calls on an Engine: the service runs them with `asyncio.to_thread`. One batcher
runs at a time (its Deployment has one replica), so a claim's state moves in one process.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import Engine, insert, select, tuple_, update

from services.batcher.plan import HELD, Claim, ClaimState, custom_id_of
from services.common.config import ModelEntry
from services.common.models import Task
from services.common.store import batch_claims, batches

_CLAIM_COLUMNS = [f.name for f in fields(Claim)]


@dataclass(frozen=True)
class NewClaim:
    """A deferrable task to claim, as the batch queue delivered it."""

    task: Task
    tier: str
    entry: ModelEntry
    route_reason: str


@dataclass(frozen=True)
class Group:
    """A batch agentq put together (a row of `agentq_batches`)."""

    group_id: str
    provider: str
    model: str
    state: str
    lines: int
    created_at: float
    batch_id: str | None = None
    submitted_at: float | None = None


def claim_tasks(engine: Engine, new: Sequence[NewClaim], now: float | None = None) -> None:
    """Store claims in one transaction; a task claimed already keeps its first claim."""
    now = time.time() if now is None else now
    keys = {(n.task.tenant, n.task.id) for n in new}
    with engine.begin() as conn:
        seen: set[tuple[str, str]] = {(tenant, task_id) for tenant, task_id in conn.execute(
            select(batch_claims.c.tenant, batch_claims.c.task_id).where(
                tuple_(batch_claims.c.tenant, batch_claims.c.task_id).in_(keys)))}
        rows = []
        for n in new:
            key = (n.task.tenant, n.task.id)
            if key in seen:
                continue
            seen.add(key)
            rows.append({"tenant": n.task.tenant, "task_id": n.task.id,
                         "custom_id": custom_id_of(n.task), "provider": n.entry.provider,
                         "model": n.entry.model, "tier": n.tier, "state": "waiting",
                         "deadline_at": _epoch(n.task), "claimed_at": now,
                         "updated_at": now, "route_reason": n.route_reason,
                         "task_json": n.task.model_dump_json()})
        if rows:
            conn.execute(insert(batch_claims), rows)


def _epoch(task: Task) -> float | None:
    # deadline_at, or for a task that never went through ingest, its deadline from
    # submitted_at: a deadline is never lost on the way (it would never come due).
    moment = task.deadline_moment()
    return moment.timestamp() if moment is not None else None


def _claim_columns() -> Any:
    # Not task_json: a cycle reads every held claim, and the prompts are read only for the
    # claims a step acts on (`tasks_of`).
    return select(*(batch_claims.c[name] for name in _CLAIM_COLUMNS))


def _claim(row: Any) -> Claim:
    return Claim(**{name: row[name] for name in _CLAIM_COLUMNS})


def held_claims(engine: Engine) -> list[Claim]:
    """Return every claim still without a Result (waiting, uploading or submitted)."""
    with engine.connect() as conn:
        rows = conn.execute(_claim_columns().where(batch_claims.c.state.in_(HELD))
                            .order_by(batch_claims.c.claimed_at)).mappings().all()
    return [_claim(row) for row in rows]


def group_members(engine: Engine, group_id: str) -> list[Claim]:
    """Return the claims put in one batch, in the order of its file."""
    with engine.connect() as conn:
        rows = conn.execute(_claim_columns().where(batch_claims.c.group_id == group_id)
                            .order_by(batch_claims.c.claimed_at, batch_claims.c.custom_id)
                            ).mappings().all()
    return [_claim(row) for row in rows]


def tasks_of(engine: Engine, claims: Iterable[Claim]) -> dict[str, Task]:
    """Return the claimed tasks by custom_id."""
    ids = [c.custom_id for c in claims]
    found: dict[str, Task] = {}
    with engine.connect() as conn:
        for start in range(0, len(ids), 500):  # bounded IN lists
            rows = conn.execute(select(batch_claims.c.custom_id, batch_claims.c.task_json)
                                .where(batch_claims.c.custom_id.in_(ids[start:start + 500])))
            found.update((cid, Task.model_validate_json(raw)) for cid, raw in rows)
    return found


def _keys(claims: Iterable[Claim]) -> Any:
    return batch_claims.c.custom_id.in_([c.custom_id for c in claims])


def open_group(engine: Engine, group_id: str, claims: Sequence[Claim],
               lines: int | None = None, now: float | None = None) -> None:
    """Record a batch about to be uploaded and move its claims into it, in one transaction:
    durable before the upload, so a restart knows what it may have sent. `lines`: the
    requests in its file (twins share one), by default one per claim."""
    now = time.time() if now is None else now
    first = claims[0]
    with engine.begin() as conn:
        conn.execute(insert(batches).values(
            group_id=group_id, provider=first.provider, model=first.model, state="uploading",
            lines=len(claims) if lines is None else lines, created_at=now))
        for start in range(0, len(claims), 200):
            conn.execute(update(batch_claims).where(
                _keys(claims[start:start + 200]), batch_claims.c.state == "waiting")
                .values(state="uploading", group_id=group_id, updated_at=now))


def group_submitted(engine: Engine, group_id: str, batch_id: str, input_file_id: str | None,
                    now: float | None = None) -> None:
    """Record that the provider created the batch."""
    now = time.time() if now is None else now
    with engine.begin() as conn:
        conn.execute(update(batches).where(batches.c.group_id == group_id).values(
            state="submitted", batch_id=batch_id, input_file_id=input_file_id,
            submitted_at=now))
        conn.execute(update(batch_claims).where(batch_claims.c.group_id == group_id,
                                                batch_claims.c.state == "uploading")
                     .values(state="submitted", batch_id=batch_id, updated_at=now))


def open_groups(engine: Engine) -> list[Group]:
    """Return the batches not ended (uploading or submitted), oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(select(batches).where(batches.c.state != "ended")
                            .order_by(batches.c.created_at)).mappings().all()
    return [Group(row["group_id"], row["provider"], row["model"], row["state"], row["lines"],
                  row["created_at"], row["batch_id"], row["submitted_at"]) for row in rows]


def set_state(engine: Engine, claims: Sequence[Claim], state: ClaimState,
              now: float | None = None) -> None:
    """Move claims to `state` (`done` once their Result is published, `live` once sent live)."""
    now = time.time() if now is None else now
    with engine.begin() as conn:
        for start in range(0, len(claims), 200):
            conn.execute(update(batch_claims).where(_keys(claims[start:start + 200]))
                         .values(state=state, updated_at=now))


def end_group(engine: Engine, group_id: str, status: str, completed: int, failed: int,
              now: float | None = None) -> None:
    """Record a batch's end, once every claim in it is settled."""
    now = time.time() if now is None else now
    with engine.begin() as conn:
        conn.execute(update(batches).where(batches.c.group_id == group_id).values(
            state="ended", status=status, completed=completed, failed=failed, ended_at=now))


def note_status(engine: Engine, group_id: str, status: str) -> None:
    """Keep the provider's last status of a batch in flight (for the dashboard)."""
    with engine.begin() as conn:
        conn.execute(update(batches).where(batches.c.group_id == group_id)
                     .values(status=status))
