"""Price calls and what agentq saved against sending everything to the premium tier."""

from __future__ import annotations

from services.common.config import AgentqConfig, ModelEntry
from services.common.models import Usage


def call_cost(entry: ModelEntry, usage: Usage) -> float:
    return entry.cost(usage.prompt_tokens, usage.completion_tokens)


def batch_cost(config: AgentqConfig, entry: ModelEntry, usage: Usage) -> float:
    """Price a line of a provider batch: the live price less the provider's batch discount."""
    return call_cost(entry, usage) * (1.0 - config.providers[entry.provider].batch_discount)


def premium_baseline(config: AgentqConfig, usage: Usage) -> float:
    """Return what these tokens would have cost on the premium tier's first model."""
    return call_cost(config.primary("premium"), usage)


def saved(config: AgentqConfig, usage: Usage, cost_usd: float) -> float:
    return max(0.0, premium_baseline(config, usage) - cost_usd)
