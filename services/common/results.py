"""Build every Result in one place: the router's cache hits and the worker's answers and failures.

A Result is built once, whole, and never changed afterwards: a later step that needs another
Result (a cascade's totals, a failed validator) takes `model_copy(update=...)` of it.
"""

from __future__ import annotations

from typing import Any, Literal

from services.common.cache import CachedAnswer
from services.common.config import AgentqConfig
from services.common.models import ErrorInfo, Latency, Result, Task, Usage
from services.common.pricing import saved

Status = Literal["succeeded", "failed"]
ERROR_MESSAGE_MAX = 2000


def waited(task: Task, now: float) -> Latency:
    """Return the latency of a task answered without a provider call: all of it queueing."""
    queued_ms = max(0.0, (now - (task.submitted_at or now)) * 1000)
    return Latency(queue=queued_ms, llm=0.0, total=queued_ms)


def task_result(task: Task, status: Status, *, tier: str, route_reason: str,
                latency: Latency, **fields: Any) -> Result:
    """Build a Result of `task`: the task's own fields are copied the same way everywhere."""
    return Result(task_id=task.id, tenant=task.tenant, status=status, tier=tier,
                  kind=task.kind, metadata=task.metadata, route_reason=route_reason,
                  latency_ms=latency, **fields)


def answered(task: Task, *, tier: str, route_reason: str, latency: Latency, output: str,
             model: str, usage: Usage, cost_usd: float, config: AgentqConfig,
             attempts: int) -> Result:
    """Build the Result of a provider's answer, priced against the premium tier."""
    return task_result(task, "succeeded", tier=tier, route_reason=route_reason,
                       latency=latency, output=output, model=model, usage=usage,
                       cost_usd=cost_usd, cost_saved_usd=saved(config, usage, cost_usd),
                       cache="miss", attempts=attempts)


def from_cache(task: Task, answer: CachedAnswer, config: AgentqConfig, *,
               cache: Literal["exact", "semantic"], route_reason: str, now: float) -> Result:
    """Build the Result of a task answered by a cached answer (or a twin's): it cost nothing."""
    return task_result(task, "succeeded", tier=answer.tier, route_reason=route_reason,
                       latency=waited(task, now), output=answer.output, model=answer.model,
                       usage=answer.usage, cost_usd=0.0,
                       cost_saved_usd=saved(config, answer.usage, 0.0), cache=cache,
                       attempts=0, cached_from=answer.task_id or None)


def failed(task: Task, *, tier: str, route_reason: str, latency: Latency, code: str,
           message: str, model: str = "", attempts: int = 0) -> Result:
    """Build the Result of a task given up on, with the reason."""
    return task_result(task, "failed", tier=tier, route_reason=route_reason, latency=latency,
                       model=model, attempts=attempts,
                       error=ErrorInfo(code=code, message=message[:ERROR_MESSAGE_MAX]))
