"""Price calls and what agentq saved against sending everything to the premium tier."""

from __future__ import annotations

from services.common.config import AgentqConfig, ModelEntry
from services.common.models import Usage


def call_cost(entry: ModelEntry, usage: Usage) -> float:
    return entry.cost(usage.prompt_tokens, usage.completion_tokens)


def premium_baseline(config: AgentqConfig, usage: Usage) -> float:
    """Return what these tokens would have cost on the premium tier's first model."""
    return call_cost(config.primary("premium"), usage)


def saved(config: AgentqConfig, usage: Usage, cost_usd: float) -> float:
    return max(0.0, premium_baseline(config, usage) - cost_usd)
