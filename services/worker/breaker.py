"""A circuit breaker per provider/model, and the choice of a tier's entry while one is open.

The state machine is pure: closed → open after `failures` failures within `window_s` →
half-open after `cooldown_s` (one probe call) → closed on its success, open again on failure.

State is kept per worker process, in memory: a failure is seen where it happens, the hot path
needs no Redis round trip, and a Redis outage cannot trip or stick every breaker at once. The
price is that each worker learns on its own: with W workers up to W × `failures` calls fail
before all of them have switched, which for a handful of workers is a few seconds of retries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from services.common.config import ModelEntry
from services.common.cost_config import BreakerConfig

State = Literal["closed", "open", "half_open"]


@dataclass(frozen=True)
class Breaker:
    state: State = "closed"
    failures: tuple[float, ...] = ()  # times of recent failures (closed state)
    opened_at: float = 0.0
    probing: bool = False  # half-open: a probe call is in flight


def current(breaker: Breaker, now: float, config: BreakerConfig) -> Breaker:
    """Return the breaker as time has moved it: an open one half-opens after the cool-down."""
    if breaker.state == "open" and now - breaker.opened_at >= config.cooldown_s:
        return Breaker(state="half_open", opened_at=breaker.opened_at)
    return breaker


def allow(breaker: Breaker, now: float, config: BreakerConfig) -> tuple[bool, Breaker]:
    """Say whether a call may go to this model now; a half-open breaker lets one probe by."""
    breaker = current(breaker, now, config)
    if breaker.state == "closed":
        return True, breaker
    if breaker.state == "half_open" and not breaker.probing:
        return True, replace(breaker, probing=True)
    return False, breaker


def on_success(breaker: Breaker) -> Breaker:
    return Breaker()


def on_failure(breaker: Breaker, now: float, config: BreakerConfig) -> Breaker:
    """Count a failure; open the breaker when the window holds too many, or a probe failed."""
    breaker = current(breaker, now, config)
    if breaker.state == "half_open":
        return Breaker(state="open", opened_at=now)
    if breaker.state == "open":
        return breaker
    recent = tuple(t for t in breaker.failures if now - t < config.window_s) + (now,)
    if len(recent) >= config.failures:
        return Breaker(state="open", opened_at=now)
    return Breaker(failures=recent)


def on_neutral(breaker: Breaker) -> Breaker:
    """Settle a call whose outcome says nothing of the model's health (e.g. a 429)."""
    return replace(breaker, probing=False)


def entry_key(entry: ModelEntry) -> str:
    return f"{entry.provider}/{entry.model}"


class Breakers:
    """This process's breakers, one per provider/model."""

    def __init__(self, config: BreakerConfig) -> None:
        self.config = config
        self._breakers: dict[str, Breaker] = {}

    def state(self, entry: ModelEntry, now: float) -> State:
        return current(self._breakers.get(entry_key(entry), Breaker()), now, self.config).state

    def pick(self, entries: Sequence[ModelEntry], now: float) -> ModelEntry:
        """Return the first entry whose breaker lets a call through.

        When every breaker is open, the first entry is tried anyway: a call that may fail
        beats a task that surely does.
        """
        for entry in entries:
            allowed, moved = allow(self._breakers.get(entry_key(entry), Breaker()), now,
                                   self.config)
            self._breakers[entry_key(entry)] = moved
            if allowed:
                return entry
        return entries[0]

    def outcome(self, entry: ModelEntry, now: float, healthy: bool | None) -> None:
        """Record a call's outcome: healthy, failed (False), or neither (None)."""
        key = entry_key(entry)
        breaker = self._breakers.get(key, Breaker())
        if healthy is None:
            self._breakers[key] = on_neutral(breaker)
        elif healthy:
            self._breakers[key] = on_success(breaker)
        else:
            self._breakers[key] = on_failure(breaker, now, self.config)
