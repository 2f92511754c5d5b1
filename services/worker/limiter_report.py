"""Turn the limiter's running totals into periodic `limiter.stats` events: pure arithmetic."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from services.worker.limiter import PoolLimits


class LimiterReport:
    """Remember the last totals; each call returns what happened since, as event data."""

    def __init__(self, pools: Mapping[str, PoolLimits],
                 sources: Callable[[], Mapping[str, str]] | None = None) -> None:
        self._pools = pools  # read at each report: learned limits change
        self._sources = sources or dict
        self._last: Mapping[str, Any] | None = None
        self._last_at = 0.0

    def events(self, totals: Mapping[str, Any], now: float) -> list[dict[str, Any]]:
        """Return one event's data per limited pool (none the first time, or with no pools)."""
        last, last_at = self._last, self._last_at
        self._last, self._last_at = dict(totals), now
        limited = {name: p for name, p in self._pools.items() if p.rpm or p.tpm}
        sources = self._sources()
        if last is None or not limited or now <= last_at:
            return []
        minutes = (now - last_at) / 60

        def since(key: str) -> float:
            return float(totals.get(key, 0)) - float(last.get(key, 0))

        # Every worker sees about its share of a backlogged pool: scale this worker's rate
        # by the live workers the limiter counts to estimate the pool's.
        workers = max(1, int(totals.get("workers", 1)))
        rpm_used = since("grants") / minutes * workers
        tpm_used = since("granted_tokens") / minutes * workers
        return [{
            "pool": name, "rpm_used": round(rpm_used, 1), "tpm_used": round(tpm_used, 1),
            "rpm_limit": limits.rpm, "tpm_limit": limits.tpm,
            "limit_source": sources.get(name, "config"),
            "grants": int(since("grants")), "waits": int(since("denials")),
            "holds": int(since("holds")), "rate_limited_429": int(since("rate_limited")),
            "fallback": bool(totals.get("fallback")), "workers": workers,
            "decision_p99_ms": round(float(totals.get("decision_p99_ms", 0)), 2),
        } for name, limits in limited.items()]
