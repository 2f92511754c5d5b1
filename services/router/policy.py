"""Choose the cheapest tier that can do a task: pure functions over the task and the config."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import AgentqConfig
from services.common.models import TIERS, Task, Tier


@dataclass(frozen=True)
class RouteDecision:
    tier: Tier
    reason: str


def tier_rank(tier: Tier) -> int:
    return TIERS.index(tier)


def cap(tier: Tier, ceiling: Tier | None) -> Tier:
    """Return `tier`, lowered to `ceiling` when it is above it."""
    if ceiling is not None and tier_rank(tier) > tier_rank(ceiling):
        return ceiling
    return tier


def by_length(prompt_tokens: int, config: AgentqConfig) -> RouteDecision:
    routing = config.routing
    if prompt_tokens >= routing.premium_from_tokens:
        return RouteDecision("premium", f"length:{prompt_tokens}>={routing.premium_from_tokens}")
    if prompt_tokens >= routing.standard_from_tokens:
        return RouteDecision("standard",
                             f"length:{prompt_tokens}>={routing.standard_from_tokens}")
    return RouteDecision("cheap", f"length:{prompt_tokens}")


def choose_tier(task: Task, config: AgentqConfig, prompt_tokens: int) -> RouteDecision:
    """Decide a task's tier: explicit hint, else its kind's rule, else its prompt length."""
    tenant = config.tenant(task.tenant)
    if task.tier is not None:
        decision = RouteDecision(task.tier, "hint")
    elif task.kind in tenant.kinds:
        decision = RouteDecision(tenant.kinds[task.kind], f"tenant-kind:{task.kind}")
    elif task.kind in config.routing.kinds:
        decision = RouteDecision(config.routing.kinds[task.kind], f"kind:{task.kind}")
    else:
        decision = by_length(prompt_tokens, config)
    capped = cap(decision.tier, tenant.ceiling)
    if capped != decision.tier:
        return RouteDecision(capped, f"{decision.reason};ceiling:{capped}")
    return decision
