"""In-process buckets that stand in for the shared pool while Redis is unreachable."""

from __future__ import annotations

import time
from collections.abc import Callable

from services.worker.limiter import bucket
from services.worker.limiter.admission import Outcome
from services.worker.limiter.bucket import BucketState
from services.worker.limiter.pools import PoolLimits


class LocalBuckets:
    """This worker's slice of each pool, decided with the same arithmetic as the shared one."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._requests: dict[str, BucketState | None] = {}
        self._tokens: dict[str, BucketState | None] = {}
        self._paused_until: dict[str, float] = {}

    def reset(self) -> None:
        """Forget the buckets, so the next outage starts from empty ones."""
        self._requests.clear()
        self._tokens.clear()

    def _start(self, pool: str, now: float) -> None:
        # Start empty: the shared pool may have been drained when Redis went away, and a
        # full local bucket in every worker would add up to a burst the provider refuses.
        if pool not in self._requests:
            self._requests[pool] = BucketState(0.0, now)
            self._tokens[pool] = BucketState(0.0, now)

    def pause(self, pool: str, seconds: float) -> None:
        """Pause the pool locally too, so a pause outlives a Redis outage."""
        until = self._clock() + seconds
        self._paused_until[pool] = max(self._paused_until.get(pool, 0.0), until)

    def acquire(self, pool: str, limits: PoolLimits, cost: float) -> Outcome:
        """Take one request and `cost` tokens from this worker's slice, or say how long to wait."""
        now = self._clock()
        paused = self._paused_until.get(pool, 0.0) - now
        if paused > 0:
            return Outcome(False, paused, "hold")
        self._start(pool, now)
        decision = bucket.decide(self._requests[pool], self._tokens[pool], limits.rpm,
                                 limits.tpm, cost, now, limits.burst_s)
        self._requests[pool] = decision.requests_state
        self._tokens[pool] = decision.tokens_state
        return Outcome(decision.granted, decision.wait_s, "ok" if decision.granted else "rate",
                       decision.requests_level, decision.tokens_level)

    def true_up(self, pool: str, limits: PoolLimits, delta: float) -> None:
        """True up: debit or credit back tokens after the real usage."""
        now = self._clock()
        self._start(pool, now)
        self._tokens[pool] = bucket.true_up(self._tokens[pool], delta, limits.tpm, now,
                                           limits.burst_s)

    def correct(self, pool: str, limits: PoolLimits, requests: float | None,
                tokens: float | None) -> None:
        """Lower the local slice to what the provider says remains."""
        now = self._clock()
        self._start(pool, now)
        self._requests[pool] = bucket.correct(self._requests[pool], requests, limits.rpm, now,
                                              limits.burst_s)
        self._tokens[pool] = bucket.correct(self._tokens[pool], tokens, limits.tpm, now,
                                            limits.burst_s)

    def levels(self, pool: str, limits: PoolLimits) -> tuple[float | None, float | None]:
        """Return the slice's request and token levels now (None if unused or unlimited)."""
        if pool not in self._requests:
            return None, None
        now = self._clock()
        req = bucket.level_at(self._requests[pool], limits.rpm, now, limits.burst_s)
        tok = bucket.level_at(self._tokens[pool], limits.tpm, now, limits.burst_s)
        return (req if limits.rpm > 0 else None), (tok if limits.tpm > 0 else None)
