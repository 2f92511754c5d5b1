"""Latency histograms with fixed log-spaced buckets: mergeable, so percentiles stay exact.

Every minute keeps a count per bucket; a window's percentile merges the counts of its minutes
and finds the bucket that holds the wanted rank. The answer is always inside that bucket
(10 buckets per decade: at most 26 % wide), never an average of averages.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Mapping

BUCKETS_PER_DECADE = 10
DECADES = 6  # 1 ms .. 1,000,000 ms (16.7 min); below and above go to the edge buckets
BOUNDS: tuple[float, ...] = tuple(10 ** (i / BUCKETS_PER_DECADE)
                                  for i in range(BUCKETS_PER_DECADE * DECADES + 1))
BUCKET_COUNT = len(BOUNDS) + 1  # bucket 0 is [0, 1 ms), the last one is [1e6 ms, inf)
STAGES: tuple[str, ...] = ("queue", "llm", "total")
QUANTILES: tuple[float, ...] = (0.5, 0.95, 0.99)


def bucket_of(value_ms: float) -> int:
    """Return the bucket index a latency falls in."""
    if not value_ms > 0:  # zero, negative and NaN all mean "no wait"
        return 0
    return bisect_right(BOUNDS, value_ms)


def bucket_range(index: int) -> tuple[float, float]:
    """Return a bucket's [lower, upper) bounds in ms (upper is inf for the last one)."""
    lower = 0.0 if index == 0 else BOUNDS[index - 1]
    upper = BOUNDS[index] if index < len(BOUNDS) else math.inf
    return lower, upper


def merge(parts: Iterable[Mapping[int, int]]) -> dict[int, int]:
    """Add bucket counts together."""
    merged: dict[int, int] = {}
    for part in parts:
        for index, count in part.items():
            merged[index] = merged.get(index, 0) + count
    return merged


def percentile(counts: Mapping[int, int], q: float) -> float | None:
    """Return the q-quantile (0 < q <= 1) of a histogram, or None when it is empty.

    The rank is found exactly among the buckets; within its bucket the value is interpolated
    geometrically (linearly in the first bucket) at the middle of the rank's share of it, so
    it never leaves the bucket.
    """
    total = sum(c for c in counts.values() if c > 0)
    if total == 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for index in sorted(counts):
        count = counts[index]
        if count <= 0:
            continue
        if seen + count >= rank:
            lower, upper = bucket_range(index)
            fraction = (rank - seen - 0.5) / count
            if math.isinf(upper):
                return lower
            if lower == 0:
                return upper * fraction
            return lower * (upper / lower) ** fraction
        seen += count
    return None  # unreachable: the loop always reaches the rank


def percentiles(counts: Mapping[int, int],
                quantiles: Iterable[float] = QUANTILES) -> dict[str, float | None]:
    """Return {"p50": ..., "p95": ..., "p99": ...} for a histogram."""
    return {f"p{round(q * 100)}": _rounded(percentile(counts, q)) for q in quantiles}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
