"""Headers the router and workers put on work messages for tiering, cascades and caching."""

from __future__ import annotations

from typing import Any

from services.common.topology import ATTEMPT_HEADER, ROUTE_HEADER

# The tier the router chose; cache entries and the in-flight lock are keyed by it, whatever
# tier a cascade ends on.
ROUTED_TIER_HEADER = "x-agentq-routed-tier"
# The calls made so far for a task that escalated (JSON of services.worker.cascade).
CASCADE_HEADER = "x-agentq-cascade"
# A semantic hit sampled for verification: JSON {"key", "output", "similarity"}.
VERIFY_HEADER = "x-agentq-verify"
# How many times a task was held for its tenant's hard budget limit.
HELD_HEADER = "x-agentq-held"
# When (epoch seconds) the task first waited for provider capacity (a 429, a hold): its wait
# budget, AGENTQ_RATE_LIMIT_WAIT_S, runs from then across retries.
RATE_WAIT_HEADER = "x-agentq-rate-wait-since"


def first_attempt(tier: str, reason: str) -> dict[str, Any]:
    """Return the headers of a task's first work message for `tier` (the router's, and the
    batcher's when a deferred task goes live)."""
    return {ROUTE_HEADER: reason, ATTEMPT_HEADER: 1, ROUTED_TIER_HEADER: tier}
