"""Which routed task waits for a provider batch: a rule the router and the batcher share.

It lives in `common` because services import only `common`, never each other.
"""

from __future__ import annotations

from datetime import UTC, datetime

from services.common.config import AgentqConfig, ModelEntry
from services.common.deadlines import route_deferrable
from services.common.models import Task


def batch_entry(config: AgentqConfig, tier: str) -> ModelEntry | None:
    """Return the model a tier's batches go to (its first), or None when its provider has no
    Batch API (`batch = false`)."""
    entry = config.primary(tier)
    return entry if config.providers[entry.provider].batch else None


def goes_to_batch(task: Task, tier: str, config: AgentqConfig, now: float) -> bool:
    """Say whether a routed task (cache missed, tier chosen) waits for a provider batch.

    A validator's failed check escalates through live calls of the next tier, so a task that
    carries one goes live from the start.
    """
    if not task.deferrable or task.validator is not None or batch_entry(config, tier) is None:
        return False
    rules = config.batches
    route = route_deferrable(_moment(now), task.deadline_moment(), True,
                             rules.turnaround_s, rules.live_margin_s)
    return route == "batch"


def _moment(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)
