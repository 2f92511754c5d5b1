"""One pydantic model per telemetry event: what each `agentq.events` payload carries.

`Event.data` is a free dict on the wire (the public contract, and new services may send new
types). These models are what our own services promise to put in it: `publishing.emit`
checks every payload against `EVENTS`, and `tests/test_event_contract.py` checks that every
event emitted has a model and that consumers read only declared fields.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.common.topology import STARTED_EVENT

log = logging.getLogger(__name__)


class EventData(BaseModel):
    """The payload of one event type; an undeclared field is a mistake, not an extension."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class TaskRouted(EventData):
    tier: str
    reason: str
    kind: str
    cache: Literal["miss", "exact", "semantic"]


class TaskStarted(EventData):
    tier: str
    attempt: int


class TaskCompleted(EventData):
    tier: str
    model: str
    cost_usd: float
    attempts: int
    llm_ms: float | None = None
    limiter_ms: float | None = None
    reason: str | None = None
    status: Literal["succeeded", "failed"] | None = None
    dedup: bool = False  # answered by an identical task's call, not its own


class TaskRetry(EventData):
    tier: str
    attempt: int
    delay_ms: int
    error_code: str


class TaskDead(EventData):
    tier: str
    attempts: int
    error_code: str


class TaskEscalated(EventData):
    tier: str
    to_tier: str
    kind: str
    reason: str
    cost_usd: float
    spent_usd: float


class CacheVerify(EventData):
    tier: str
    kind: str
    agreed: bool
    similarity: float | None = None


class BudgetSoft(EventData):
    tier: str
    reason: str


class BudgetHard(EventData):
    tier: str
    action: str


class WorkerHeartbeat(EventData):
    worker_id: str
    tiers: list[str]
    in_flight: int
    concurrency: int
    pid: int


class LimiterStats(EventData):
    """One pool's limiter figures since the worker's last report (`LimiterReport.events`)."""

    worker_id: str
    pool: str
    rpm_used: float
    tpm_used: float
    rpm_limit: int
    tpm_limit: int
    limit_source: str
    grants: int
    waits: int
    holds: int
    rate_limited_429: int  # the provider's 429s on this pool: the dashboard's 429 count
    fallback: bool
    workers: int
    decision_p99_ms: float


class LimiterLowered(EventData):
    worker_id: str
    pool: str
    limit: Literal["rpm", "tpm"]
    configured: int
    advertised: int


class Scaling(EventData):
    """`scale.up` and `scale.down`: the autoscaler changed the number of workers."""

    from_: int = Field(alias="from")
    to: int
    reason: str
    ready: int
    unacked: int
    depth_source: str


EVENTS: Mapping[str, type[EventData]] = {
    "task.routed": TaskRouted,
    STARTED_EVENT: TaskStarted,
    "task.completed": TaskCompleted,
    "task.retry": TaskRetry,
    "task.dead": TaskDead,
    "task.escalated": TaskEscalated,
    "cache.verify": CacheVerify,
    "budget.soft": BudgetSoft,
    "budget.hard": BudgetHard,
    "worker.heartbeat": WorkerHeartbeat,
    "limiter.stats": LimiterStats,
    "limiter.lowered": LimiterLowered,
    "scale.up": Scaling,
    "scale.down": Scaling,
}


class EventContractError(ValueError):
    """An event our own code emits has no model, or its payload does not match it."""


def fields_of(type_: str) -> frozenset[str]:
    """Return the data keys an event type declares (as they appear on the wire)."""
    model = EVENTS[type_]
    return frozenset(f.alias or name for name, f in model.model_fields.items())


def check(type_: str, data: Mapping[str, Any]) -> None:
    """Raise EventContractError unless `data` is a valid payload of event `type_`."""
    model = EVENTS.get(type_)
    if model is None:
        raise EventContractError(f"event {type_!r} has no model in services.common.events")
    try:
        model.model_validate(dict(data))
    except ValidationError as exc:
        raise EventContractError(f"event {type_!r}: {exc}") from None


_strict = False


def set_strict(on: bool) -> None:
    """Make `checked` raise (tests, AGENTQ_STRICT_EVENTS=1) instead of logging."""
    global _strict
    _strict = on


def checked(type_: str, data: Mapping[str, Any]) -> bool:
    """Check a payload about to be emitted; return whether it matches its model.

    A mismatch is our bug, never the task's: in production it is logged as an error and the
    event still goes out (telemetry must not fail, redeliver or park a task); strict, it raises
    so that tests fail at the line that emits it.
    """
    try:
        check(type_, data)
    except EventContractError as exc:
        if _strict:
            raise
        log.error("%s", exc)
        return False
    return True
