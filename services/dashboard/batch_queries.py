"""Read the batcher's tables (services.common.store) for the overview's Batches card."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, func, select

from services.common.store import batch_claims, batches, tasks
from services.dashboard.batch_saving import BatchedGroup
from services.dashboard.db_session import DbSession
from services.dashboard.queries import total

WAITING_STATES = ("waiting", "uploading", "submitted")  # claimed, no Result yet
FINISHED = ("succeeded", "failed")


@dataclass(frozen=True)
class InFlight:
    """Batches the provider has not ended yet, and their lines."""

    batches: int
    lines: int


def deferred_waiting(session: DbSession, tenant: str | None = None) -> int:
    """Return the deferrable tasks the batcher holds that have no Result yet."""
    query = select(func.count()).select_from(batch_claims).where(
        batch_claims.c.state.in_(WAITING_STATES))
    if tenant:
        query = query.where(batch_claims.c.tenant == tenant)
    return int(session.scalar(query) or 0)


def in_flight(session: DbSession) -> InFlight:
    """Return the batches not ended (every tenant's: one batch holds many tenants' lines)."""
    row = session.execute(select(func.count(), total(batches.c.lines))
                          .where(batches.c.state != "ended")).one()
    return InFlight(int(row[0] or 0), int(row[1] or 0))


def batched_results(session: DbSession, start: float,
                    tenant: str | None = None) -> list[BatchedGroup]:
    """Return, per provider, the Results batches gave that finished since `start`."""
    joined = batch_claims.join(tasks, and_(tasks.c.tenant == batch_claims.c.tenant,
                                           tasks.c.id == batch_claims.c.task_id))
    # A claim turns `done` once its Result is published, so `updated_at` bounds the rows to
    # read before the join; the Result's own finish time places it in the window.
    query = (select(batch_claims.c.provider, func.count(), total(tasks.c.cost_usd))
             .select_from(joined)
             .where(batch_claims.c.state == "done", batch_claims.c.updated_at >= start,
                    tasks.c.status.in_(FINISHED), tasks.c.finished_at >= start)
             .group_by(batch_claims.c.provider))
    if tenant:
        query = query.where(batch_claims.c.tenant == tenant)
    return [BatchedGroup(provider, int(count), float(cost))
            for provider, count, cost in session.execute(query)]
