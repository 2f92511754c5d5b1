"""The one percentile of raw samples every figure uses (histograms have their own,
services/dashboard/histogram.py)."""

from __future__ import annotations

import math
from collections.abc import Iterable


def nearest_rank(values: Iterable[float], q: float) -> float:
    """Return the q-quantile (0..1) of `values` by nearest rank (the smallest value with at
    least q of them at or below it); 0 when there are none."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return float(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))])
