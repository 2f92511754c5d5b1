"""Choose the cheapest tier that can do a task: pure functions over the task and the config."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.budget import BudgetLevel
from services.common.config import AgentqConfig
from services.common.models import TIERS, Task, Tier
from services.router.complexity import score


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


def by_complexity(task: Task, config: AgentqConfig, prompt_tokens: int) -> RouteDecision:
    """Route by prompt length, raised when the complexity score passes the kind's thresholds."""
    by_tokens = by_length(prompt_tokens, config)
    text = "\n".join(m.content for m in task.messages)
    complexity = score(text, prompt_tokens, len(task.messages))
    thresholds = config.routing.complexity.for_kind(task.kind)
    levels: tuple[tuple[Tier, float], ...] = (
        ("premium", thresholds.premium_from), ("standard", thresholds.standard_from))
    for tier, bound in levels:
        if complexity.score >= bound and tier_rank(tier) > tier_rank(by_tokens.tier):
            return RouteDecision(
                tier, f"complexity:{complexity.score:.2f}>={bound:.2f}({complexity.describe()})")
    return by_tokens


def floor(kind: str, config: AgentqConfig) -> Tier:
    """Return the lowest tier a kind can do its job on."""
    return config.routing.floors.get(kind, "cheap")


def one_down(tier: Tier, lowest: Tier) -> Tier:
    """Return the tier below `tier`, but not below `lowest` (and never above `tier`)."""
    return TIERS[min(tier_rank(tier), max(tier_rank(lowest), tier_rank(tier) - 1))]


def choose_tier(task: Task, config: AgentqConfig, prompt_tokens: int,
                budget: BudgetLevel = "ok") -> RouteDecision:
    """Decide a task's tier: hint, tenant's kind rule, kind rule, else length and complexity.

    A tenant past a soft budget limit goes one tier down (not below the kind's floor); the
    tenant's ceiling caps the result.
    """
    tenant = config.tenant(task.tenant)
    if task.tier is not None:
        decision = RouteDecision(task.tier, "hint")
    elif task.kind in tenant.kinds:
        decision = RouteDecision(tenant.kinds[task.kind], f"tenant-kind:{task.kind}")
    elif task.kind in config.routing.kinds:
        decision = RouteDecision(config.routing.kinds[task.kind], f"kind:{task.kind}")
    else:
        decision = by_complexity(task, config, prompt_tokens)
    if budget != "ok":
        lowered = one_down(decision.tier, floor(task.kind, config))
        if lowered != decision.tier:
            decision = RouteDecision(lowered, f"{decision.reason};budget-{budget}:{lowered}")
    capped = cap(decision.tier, tenant.ceiling)
    if capped != decision.tier:
        return RouteDecision(capped, f"{decision.reason};ceiling:{capped}")
    return decision
