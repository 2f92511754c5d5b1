"""Ask the autoscaler's policy how many workers it would run for what the dashboard sees."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.autoscale.policy import suggest_workers

# The card is advice for a person, not a limit: cap it where advice stops being useful.
MAX_SUGGESTED = 256


def suggest(doc: Mapping[str, Any], limiter_rpm: int) -> int | None:
    """Return the policy's worker count for a metrics document, None while it can't tell.

    Per-worker rate is the workers' concurrency over the median LLM time (Little's law);
    until workers have reported and calls have been timed there is nothing to go on.
    """
    workers = doc["workers"]["online"]
    llm_ms = doc["latency_ms"]["llm"]["p50"]
    if not workers or not llm_ms:
        return None
    concurrency = max(1, round(doc["workers"]["concurrency"] / workers))
    decision = suggest_workers(
        ready=int(doc["backlog"] or 0), unacked=int(doc["workers"]["in_flight"] or 0),
        growth_per_min=0.0, current=workers, min_workers=1, max_workers=MAX_SUGGESTED,
        per_worker_rate=concurrency / (llm_ms / 1000), limiter_rpm=limiter_rpm,
        concurrency=concurrency)
    return decision.target
