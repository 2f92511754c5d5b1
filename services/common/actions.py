"""Action values that more than one service's decisions return (the router's `decide.py`,
the worker's `actions.py`): frozen, so a decision, once made, is not changed on the way."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.common.models import Result


@dataclass(frozen=True)
class Reject:
    """The message can never be processed: park it in `rejected` with the reason."""

    reason: str


@dataclass(frozen=True)
class Emit:
    """Publish a telemetry event about the task."""

    type: str
    tenant: str
    task_id: str
    data: Mapping[str, Any] = field(default_factory=dict)


def completed(result: Result, attempts: int, *, timed: bool = True,
              dedup: bool = False) -> Emit:
    """Return the `task.completed` event of a finished task, from its Result: one shape for
    the worker's answers and twins and the batcher's batch Results.

    `timed`: the Result's call times are a worker's (the autoscaler learns task time from
    `llm_ms`); a twin's or a batch's are not, so they are left out.
    """
    latency = result.latency_ms
    return Emit("task.completed", result.tenant, result.task_id,
                {"tier": result.tier, "model": result.model, "cost_usd": result.cost_usd,
                 "attempts": attempts, "llm_ms": latency.llm if timed else None,
                 "limiter_ms": latency.limiter if timed else None,
                 "reason": result.route_reason, "status": result.status, "dedup": dedup})
