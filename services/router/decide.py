"""Decide what the router does with one accepted task: pure functions over plain data.

The table, in the order a task meets it (step: function -> outcome):

- receive: `read_task` -> the Task, or `Reject` (the body is not a Task)
- tier: `tier_for` -> the tier policy's `RouteDecision` (`policy.choose_tier`, budget level in)
- which caches to ask: `asks_exact`, `semantic_threshold` (the service asks them, in order)
- `route_plan` -> a Plan: `Emit` budget.soft first when the tenant is past its soft limit, then
  - an exact hit: `Answer` (cache `exact`)
  - a semantic hit not sampled for verification: `Answer` (cache `semantic`, reason
    `...;semantic:<similarity>`)
  - a semantic hit sampled: `Route` with the verify header (reason `...;verify`): the worker
    asks the model for real and compares
  - no hit: `dispatch` -> `Route` to the tier's work queue (the tenant's lane), or `Defer`
    to the batcher for a deferrable task whose deadline leaves room (`deferral.goes_to_batch`)
  - then `Emit` task.routed with the cache outcome.

`Router.act` (`service.py`) carries a Plan out; nothing here touches the broker, Redis or a clock.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from services.common.actions import Emit, Reject
from services.common.budget import BudgetLevel
from services.common.cache import CachedAnswer, cacheable
from services.common.config import AgentqConfig
from services.common.deferral import goes_to_batch
from services.common.models import Result, Task
from services.common.results import from_cache
from services.common.semantic_cache import (
    SemanticHit,
    sampled_for_verification,
    semantic_cacheable,
)
from services.common.tokens import count_messages
from services.common.topology import ROUTE_HEADER
from services.common.work_headers import VERIFY_HEADER, first_attempt
from services.router.policy import RouteDecision, choose_tier

CacheOutcome = Literal["miss", "exact", "semantic"]


@dataclass(frozen=True)
class Answer:
    """Publish the Result of a task answered from the cache (and to its reply queue)."""

    result: Result
    tier: str
    cache: Literal["exact", "semantic"]
    reply_to: str | None = None


@dataclass(frozen=True)
class Route:
    """Queue the task for a worker of `tier`, in its tenant's lane (or the tier's queue)."""

    tier: str
    task: Task
    headers: Mapping[str, Any]


@dataclass(frozen=True)
class Defer:
    """Queue the task for the batcher (`agentq.batch`, key = its tier): it waits for a
    provider batch, at the batch price."""

    tier: str
    task: Task
    headers: Mapping[str, Any]


Action = Reject | Answer | Route | Defer | Emit
Plan = tuple[Action, ...]


@dataclass(frozen=True)
class Found:
    """What the caches said about a task: at most one of them is asked to answer it."""

    exact: CachedAnswer | None = None
    semantic: SemanticHit | None = None


def read_task(body: bytes) -> Task | Reject:
    """Parse an accepted task, or say why it can never be routed."""
    try:
        return Task.model_validate_json(body)
    except ValidationError as exc:
        return Reject(f"not a Task: {exc.errors()[0]['msg']}")


def tier_for(task: Task, config: AgentqConfig, level: BudgetLevel) -> RouteDecision:
    """Ask the tier policy for the task's tier, given its tenant's budget level."""
    tokens = count_messages(m.model_dump() for m in task.messages)
    return choose_tier(task, config, tokens, budget=level)


def asks_exact(task: Task) -> bool:
    """Say whether the exact cache may answer the task."""
    return cacheable(task)


def semantic_threshold(task: Task, config: AgentqConfig) -> float | None:
    """Return the similarity a semantic hit needs for this task, or None: do not ask."""
    if not semantic_cacheable(task):
        return None
    return config.cache.semantic_threshold(task.kind)


def route_plan(task: Task, route: RouteDecision, level: BudgetLevel, found: Found,
               config: AgentqConfig, now: float) -> Plan:
    """Decide how the task leaves the router: answered from a cache, or queued for a worker."""
    soft: Plan = ()
    if level == "soft":
        soft = (Emit("budget.soft", task.tenant, task.id,
                     {"tier": route.tier, "reason": route.reason}),)
    headers = first_attempt(route.tier, route.reason)
    if found.exact is not None:
        return (*soft, *answer(task, route, found.exact, "exact", config, now))
    hit = found.semantic
    if hit is not None and not sampled_for_verification(task.id, config.cache.verify_share):
        reason = f"{route.reason};semantic:{hit.similarity:.3f}"
        return (*soft, *answer(task, RouteDecision(route.tier, reason), hit.answer,
                               "semantic", config, now))
    if hit is not None:
        # Sampled: ask the model for real and let the worker compare the two answers.
        route = RouteDecision(route.tier, f"{route.reason};verify")
        headers[ROUTE_HEADER] = route.reason
        headers[VERIFY_HEADER] = json.dumps({"key": hit.key, "output": hit.answer.output,
                                             "similarity": hit.similarity})
    return (*soft, dispatch(task, route, headers, config, now), routed(task, route, "miss"))


def dispatch(task: Task, route: RouteDecision, headers: Mapping[str, Any],
             config: AgentqConfig | None = None, now: float = 0.0) -> Action:
    """Say where a task no cache answered goes: to a worker of its tier, or to the batcher.

    Deferred only after the caches and the tier (a hit never waits; a batch is per provider
    and model), and never a semantic hit sampled for verification (its worker compares).
    """
    if (config is not None and VERIFY_HEADER not in headers
            and goes_to_batch(task, route.tier, config, now)):
        return Defer(route.tier, task, headers)
    return Route(route.tier, task, headers)


def answer(task: Task, route: RouteDecision, hit: CachedAnswer,
           cache: Literal["exact", "semantic"], config: AgentqConfig, now: float) -> Plan:
    """Answer the task with a cached answer: its Result, then the routed event."""
    result = from_cache(task, hit, config, cache=cache, route_reason=route.reason, now=now)
    return Answer(result, route.tier, cache, task.reply_to), routed(task, route, cache)


def routed(task: Task, route: RouteDecision, cache: CacheOutcome) -> Emit:
    """Return the task.routed event of a task leaving the router."""
    return Emit("task.routed", task.tenant, task.id,
                {"tier": route.tier, "reason": route.reason, "kind": task.kind, "cache": cache})
