"""Decide rate-limit admission like OpenAI: token buckets over requests and tokens per minute.

Pure arithmetic: the caller passes the time in, so every decision is unit-testable.
OpenAI replenishes continuously, so each bucket holds up to its per-minute limit and
refills at limit/60 units per second; a request is admitted only if both buckets hold
enough, and then it is charged to both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Kind = Literal["requests", "tokens"]
_EPSILON = 1e-9


@dataclass(slots=True)
class TokenBucket:
    """Hold up to `capacity` units, refilled at capacity/60 per second."""

    capacity: float
    level: float
    updated: float

    @classmethod
    def full(cls, per_minute: int, now: float) -> TokenBucket:
        """Return a full bucket for a per-minute limit."""
        return cls(capacity=float(per_minute), level=float(per_minute), updated=now)

    @property
    def rate(self) -> float:
        """Return the refill rate in units per second."""
        return self.capacity / 60.0

    def refill(self, now: float) -> None:
        """Add what flowed in since the last update."""
        # A clock that steps backwards must not drain the bucket.
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
            self.updated = now

    def wait_for(self, cost: float) -> float:
        """Return the seconds until `cost` units are available; inf if never."""
        if cost > self.capacity:
            return math.inf
        # The epsilon absorbs float drift, so a bucket refilled to exactly `cost` admits it.
        return max(0.0, (cost - self.level - _EPSILON) / self.rate)

    def time_to_full(self) -> float:
        """Return the seconds until the bucket is back at capacity."""
        return (self.capacity - self.level) / self.rate


@dataclass(frozen=True, slots=True)
class Quota:
    """Report one limit as OpenAI's x-ratelimit-* headers do."""

    limit: int
    remaining: int
    reset: float  # seconds until back at the full limit

    @property
    def used(self) -> int:
        """Return how much of the limit is currently spent."""
        return self.limit - self.remaining


@dataclass(frozen=True, slots=True)
class Decision:
    """Say whether a request is admitted, and the state of both limits afterwards."""

    allowed: bool
    requests: Quota | None  # None when the limit is off
    tokens: Quota | None
    retry_after: float = 0.0  # seconds; inf when the request can never fit
    exceeded: Kind | None = None


class RateLimiter:
    """Admit requests against requests-per-minute and tokens-per-minute; 0 means unlimited."""

    def __init__(self, rpm: int, tpm: int, now: float) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self._requests = TokenBucket.full(rpm, now) if rpm > 0 else None
        self._tokens = TokenBucket.full(tpm, now) if tpm > 0 else None

    def acquire(self, tokens: int, now: float) -> Decision:
        """Admit one request costing `tokens`, charging both limits, or deny it."""
        waits: list[tuple[float, Kind]] = []
        if self._requests is not None:
            self._requests.refill(now)
            waits.append((self._requests.wait_for(1), "requests"))
        if self._tokens is not None:
            self._tokens.refill(now)
            waits.append((self._tokens.wait_for(tokens), "tokens"))
        # Deny on the limit that frees up last: that is when the request will fit.
        wait, kind = max(waits, default=(0.0, None))
        if wait > 0:
            return Decision(False, *self._quotas(), retry_after=wait, exceeded=kind)
        if self._requests is not None:
            self._requests.level -= 1
        if self._tokens is not None:
            self._tokens.level -= tokens
        return Decision(True, *self._quotas())

    def peek(self, now: float) -> tuple[Quota | None, Quota | None]:
        """Return the request and token quotas at `now` without charging anything."""
        for bucket in (self._requests, self._tokens):
            if bucket is not None:
                bucket.refill(now)
        return self._quotas()

    def _quotas(self) -> tuple[Quota | None, Quota | None]:
        return _quota(self._requests), _quota(self._tokens)


def _quota(bucket: TokenBucket | None) -> Quota | None:
    if bucket is None:
        return None
    # Fractional units cannot be spent, so report what a caller can actually use.
    remaining = max(0, math.floor(bucket.level + _EPSILON))
    return Quota(int(bucket.capacity), remaining, max(0.0, bucket.time_to_full()))


def format_duration(seconds: float) -> str:
    """Format seconds as OpenAI's reset headers do: "120ms", "1.2s", "6m0s"."""
    # Round up so that a client waiting this long is admitted; round first to drop float noise.
    millis = math.ceil(round(seconds * 1000, 6))
    if millis <= 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    text = f"{millis / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    return f"{minutes}m{text}" if minutes else text
