"""What provider batches saved, apart from tiering and caching (pure).

A batched Result's cost is its live price less the provider's `batch_discount`; its
`cost_saved_usd` is measured, like every Result's, against the premium tier's live price, so
it holds the tiering saving and the batch discount together. The dashboard takes the batch
discount out of it and shows it on its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from services.dashboard.self_hosting import PlanError, non_negative
from services.dashboard.snapshot import HOURS_PER_MONTH


def live_price(batch_usd: float, discount: float) -> float:
    """Return what a call that cost `batch_usd` at a batch discount costs live."""
    non_negative("batch_usd", batch_usd)
    if non_negative("discount", discount) >= 1:
        raise PlanError("discount", f"must be below 1 (got {discount:g}): a free batch says "
                        "nothing of the live price")
    return batch_usd / (1.0 - discount)


def batching_saving(live_usd: float, batch_usd: float) -> float:
    """Return the live price less the batch price (never below 0)."""
    return max(0.0, non_negative("live_usd", live_usd) - non_negative("batch_usd", batch_usd))


@dataclass(frozen=True)
class BatchedGroup:
    """One provider's batched Results in a window, as the store sums them."""

    provider: str
    results: int
    cost_usd: float  # at the batch price


@dataclass(frozen=True)
class BatchSaving:
    """The window's batched Results and what batching saved on them."""

    results: int = 0
    cost_usd: float = 0.0
    live_usd: float = 0.0
    saved_usd: float = 0.0
    unpriced: int = 0  # Results of a provider not in the tier table, or with a 100 % discount


def batch_saving(groups: Iterable[BatchedGroup], discounts: Mapping[str, float]) -> BatchSaving:
    """Return the batched Results' batch cost, live price and saving, over every provider."""
    results = unpriced = 0
    cost = live = 0.0
    for group in groups:
        results += group.results
        cost += group.cost_usd
        discount = discounts.get(group.provider)
        if discount is None or discount >= 1:
            unpriced += group.results
            live += group.cost_usd  # counted at what it cost: no saving claimed
        else:
            live += live_price(group.cost_usd, discount)
    return BatchSaving(results, cost, live, batching_saving(live, cost), unpriced)


def tiering_apart(saved_tiering_usd: float, saved_batching_usd: float) -> float:
    """Return the tiering saving without the batch discount it was measured with."""
    return max(0.0, saved_tiering_usd - saved_batching_usd)


def per_month(amount_usd: float, span_s: float) -> float:
    """Return the monthly rate of an amount spent or saved over `span_s` seconds."""
    if non_negative("span_s", span_s) == 0:
        raise PlanError("span_s", "must be more than 0 s")
    return amount_usd / span_s * 3600 * HOURS_PER_MONTH
