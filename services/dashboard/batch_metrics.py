"""Add the batching and self-hosting figures to a window's metrics document."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from services.common.config import ConfigError
from services.common.settings import Settings
from services.dashboard import batch_queries
from services.dashboard.batch_saving import batch_saving, per_month, tiering_apart
from services.dashboard.db_session import DbSession
from services.dashboard.self_hosting import GpuPlan, Volume, compare


def batch_discounts(settings: Settings) -> dict[str, float]:
    """Return each provider's batch discount from the tier table (empty if it is broken)."""
    try:
        config = settings.tier_table()
    except (ConfigError, ValueError):
        return {}  # the batcher refuses a broken table; its saving is then shown as unpriced
    return {name: provider.batch_discount for name, provider in config.providers.items()}


def add_batching(doc: dict[str, Any], session: DbSession, start: float, tenant: str | None,
                 discounts: Mapping[str, float]) -> None:
    """Add `batches` and the batch saving, taken out of the tiering saving, to `doc`."""
    saving = batch_saving(batch_queries.batched_results(session, start, tenant), discounts)
    flight = batch_queries.in_flight(session)
    totals = doc["totals"]
    span_s = max(float(doc["span_s"]), 1.0)
    monthly_saving = per_month(saving.saved_usd, span_s)
    doc["batches"] = {
        "deferred_waiting": batch_queries.deferred_waiting(session, tenant),
        "in_flight": flight.batches, "lines_in_flight": flight.lines,
        "results": saving.results, "cost_usd": round(saving.cost_usd, 6),
        "live_usd": round(saving.live_usd, 6), "saved_usd": round(saving.saved_usd, 6),
        "unpriced": saving.unpriced}
    totals["saved_tiering_usd"] = round(tiering_apart(totals["saved_tiering_usd"],
                                                      saving.saved_usd), 6)
    totals["saved_batching_usd"] = round(saving.saved_usd, 6)
    totals["projected_monthly_batching_saving_usd"] = round(monthly_saving, 2)
    totals["projected_monthly_without_batching_usd"] = round(
        totals["projected_monthly_usd"] + monthly_saving, 2)


def add_self_hosting(doc: dict[str, Any], plan: GpuPlan | None) -> None:
    """Add `self_hosting`: the plan's monthly cost at the window's volume, and break-even."""
    totals = doc["totals"]
    out: dict[str, Any] = {"configured": plan is not None}
    if plan is not None:
        volume = Volume.observed(totals["tasks"],
                                 totals["prompt_tokens"] + totals["completion_tokens"],
                                 totals["cost_usd"], max(float(doc["span_s"]), 1.0))
        result = compare(plan, volume)
        out.update(asdict(plan))
        out.update({k: (round(v, 4) if isinstance(v, float) else v)
                    for k, v in asdict(result).items()})
        out["cheaper"] = result.cheaper
    doc["self_hosting"] = out
