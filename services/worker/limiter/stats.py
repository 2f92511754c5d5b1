"""Count what the limiter does: Prometheus metrics plus in-process totals for events."""

from __future__ import annotations

from collections import Counter, deque

from services.common.quantile import nearest_rank
from services.worker.limiter import bucket, metrics
from services.worker.limiter.pools import PoolLimits

# Keys of the limiter.stats event (public): "settles" counts true-ups, "holds" pauses.
_TOTALS = ("grants", "grants_shared", "grants_local", "granted_tokens", "denials", "settles",
           "holds", "rate_limited", "redis_errors", "redis_timeouts", "fallback_events")


class LimiterStats:
    """One limiter's counters; each record also updates the process's Prometheus metrics."""

    def __init__(self, latency_samples: int = 10_000) -> None:
        self._counts: Counter[str] = Counter()
        self._wait_total = 0.0
        self._wait_max = 0.0
        self._latencies: deque[float] = deque(maxlen=latency_samples)

    def granted(self, pool: str, mode: str, tokens: int, waited_s: float) -> None:
        self._counts.update(("grants", f"grants_{mode}"))
        self._counts["granted_tokens"] += tokens
        self._wait_total += waited_s
        self._wait_max = max(self._wait_max, waited_s)
        metrics.GRANTS.labels(pool, mode).inc()
        metrics.GRANTED_TOKENS.labels(pool).inc(tokens)
        metrics.WAIT_SECONDS.labels(pool).observe(waited_s)

    def denied(self, pool: str, reason: str) -> None:
        self._counts["denials"] += 1
        metrics.DENIALS.labels(pool, reason).inc()

    def decided(self, pool: str, elapsed_s: float) -> None:
        self._latencies.append(elapsed_s)
        metrics.DECISION_SECONDS.labels(pool).observe(elapsed_s)

    def trued_up(self, pool: str, delta: int) -> None:
        self._counts["settles"] += 1
        metrics.TRUED_UP_TOKENS.labels(pool, "debit" if delta > 0 else "credit").inc(abs(delta))

    def paused(self, pool: str, seconds: float) -> None:
        self._counts["holds"] += 1
        metrics.PAUSES.labels(pool).inc()
        metrics.PAUSE_SECONDS.labels(pool).inc(seconds)

    def rate_limited(self, pool: str) -> None:
        self._counts["rate_limited"] += 1
        metrics.RATE_LIMITED.labels(pool).inc()

    def redis_error(self) -> None:
        self._counts["redis_errors"] += 1

    def redis_timeout(self) -> None:
        """A Redis call timed out (retried; an outage only if pings time out too)."""
        self._counts["redis_timeouts"] += 1

    def fallback(self, on: bool) -> None:
        if on:
            self._counts["fallback_events"] += 1
            metrics.FALLBACK_EVENTS.inc()
        metrics.FALLBACK.set(1 if on else 0)

    def workers(self, live: int) -> None:
        metrics.LIVE_WORKERS.set(live)

    def levels(self, pool: str, limits: PoolLimits, requests: float | None,
               tokens: float | None) -> None:
        """Show how depleted the pool's buckets are."""
        if requests is not None:
            metrics.DEPLETION.labels(pool, "rpm").set(
                bucket.depletion(requests, limits.rpm, limits.burst_s))
        if tokens is not None:
            metrics.DEPLETION.labels(pool, "tpm").set(
                bucket.depletion(tokens, limits.tpm, limits.burst_s))

    def snapshot(self) -> dict[str, float]:
        """Return the cumulative totals and recent decision latency."""
        recent = list(self._latencies)
        out: dict[str, float] = {key: self._counts[key] for key in _TOTALS}
        out.update(wait_s_total=self._wait_total, wait_s_max=self._wait_max,
                   decisions=len(recent),
                   decision_p50_ms=nearest_rank(recent, 0.50) * 1000,
                   decision_p99_ms=nearest_rank(recent, 0.99) * 1000)
        return out
