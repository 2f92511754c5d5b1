"""Decide a pool's limits from what is known: the tier table, the provider's headers, or an
adaptive rule (AIMD) once a provider that says neither answers 429. Pure functions over plain
data; `learned.py` does the I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from services.worker.limiter.pools import PoolLimits

# "unlimited": nothing known and no 429 yet (a local vLLM or Ollama): calls are not paced.
Source = Literal["config", "headers", "adaptive", "unlimited"]


@dataclass(frozen=True)
class AdaptiveParams:
    """The adaptive rule's tuning (see docs/limiter.md, "Limits learned")."""

    initial_rpm: float = 60.0  # where the rule starts if no rate was seen before the 429
    # The rate seen before the first 429 is taken over at least this long. Too high a start
    # costs a few 429s (each decrease takes 30 % off); too low a start costs minutes of
    # additive increase, so the estimate errs high.
    min_observed_s: float = 1.0
    min_rpm: float = 1.0
    max_rpm: float = 1_000_000.0
    # After a decrease, each saturated success adds `step` (a tenth of a request per call,
    # +10 % a minute at the limit: congestion avoidance); with no decrease for `relax_s`
    # (the 429s were passing, or the limit rose), `slow_start_step` (the limit doubles every
    # minute spent at it: TCP's slow start) until the next 429.
    slow_start_step: float = 1.0
    step: float = 0.1
    relax_s: float = 60.0
    decrease: float = 0.7  # a 429 multiplies the limit by this...
    cooldown_s: float = 2.0  # ...once: the 429s of one burst within this are one signal
    # An adaptive pool's bucket holds this many seconds of its limit, not the usual 54: its
    # limit is a guess, and a guess must not be spent in one burst.
    burst_s: float = 3.0


@dataclass(frozen=True)
class Adaptive:
    """A pool's learned RPM under the adaptive rule, shared by every worker through Redis."""

    rpm: float
    threshold: float = 0.0  # the limit after the last decrease; 0 = no 429 seen yet
    decreased_at: float = 0.0  # epoch seconds of the last decrease

    @classmethod
    def start(cls, params: AdaptiveParams) -> Adaptive:
        return cls(rpm=params.initial_rpm)


def increase(state: Adaptive, successes: int, now: float, params: AdaptiveParams) -> Adaptive:
    """Additive increase: raise the limit for `successes` calls that succeeded at the limit.

    Only calls that had to wait for capacity count: a pool that is not using its limit learns
    nothing about the provider's, and must not grow a limit it never tried.
    """
    if successes <= 0:
        return state
    slow = state.threshold == 0 or now - state.decreased_at >= params.relax_s
    step = params.slow_start_step if slow else params.step
    return replace(state, rpm=min(params.max_rpm, state.rpm + successes * step))


def decrease(state: Adaptive, now: float, params: AdaptiveParams) -> Adaptive:
    """Multiplicative decrease on a 429, at most once per cooldown."""
    if state.decreased_at and now - state.decreased_at < params.cooldown_s:
        return state
    rpm = max(params.min_rpm, state.rpm * params.decrease)
    return Adaptive(rpm=rpm, threshold=rpm, decreased_at=now)


def observed_rpm(successes: Sequence[float], first_at: float, now: float, workers: int,
                 params: AdaptiveParams) -> float:
    """Estimate the pool's RPM from this worker's successes in the last minute (their times),
    scaled by the live workers (each sees about its share)."""
    recent = [t for t in successes if now - t <= 60.0]
    if not recent:
        return 0.0
    span = min(60.0, max(params.min_observed_s, now - first_at))
    return len(recent) / span * 60.0 * max(1, workers)


def rule_start(observed: float, params: AdaptiveParams) -> Adaptive:
    """Return where the rule starts at a pool's first 429 (before that 429's decrease): the
    rate the pool was getting, else `initial_rpm`."""
    return Adaptive(rpm=min(params.max_rpm, observed) if observed > 0 else params.initial_rpm)


def adaptive_limits(state: Adaptive, params: AdaptiveParams) -> PoolLimits:
    """Return the bucket a pool of adaptive limits runs on."""
    return PoolLimits(rpm=max(1, round(state.rpm)), tpm=0, burst_s=params.burst_s)


@dataclass(frozen=True)
class Lowered:
    """The provider advertises less than the tier table configures: the lower one wins."""

    limit: Literal["rpm", "tpm"]
    configured: int
    advertised: int


Advertised = tuple[int | None, int | None]  # requests, tokens per minute


def combine(by_model: Mapping[str, Advertised]) -> Advertised:
    """Return the limits a provider pool takes from what each of its models' answers said.

    A provider may limit per key (one figure whatever the model) or per model (OpenAI):
    headers cannot tell. The lowest figure holds for the whole pool, so that answers of
    models with different limits do not swing the pool between them (never too fast, at
    the cost of pacing a faster model as its slowest sibling when the table gives none).
    """
    rpms = [rpm for rpm, _ in by_model.values() if rpm]
    tpms = [tpm for _, tpm in by_model.values() if tpm]
    return (min(rpms) if rpms else None), (min(tpms) if tpms else None)


def effective(configured: PoolLimits, advertised_rpm: int | None, advertised_tpm: int | None
              ) -> tuple[PoolLimits, Source, list[Lowered]]:
    """Combine the configured limits with the provider's advertised ones, per limit.

    A configured limit stands unless the provider advertises a lower one; an unconfigured
    limit takes the advertised one. Returns the limits, where they came from (`headers` if
    any advertised number is in force) and each configured limit the provider lowered.
    """
    lowered: list[Lowered] = []
    values: dict[str, int] = {}
    from_headers = False
    for name, mine, theirs in (("rpm", configured.rpm, advertised_rpm),
                               ("tpm", configured.tpm, advertised_tpm)):
        value = mine
        if theirs is not None and theirs > 0 and (mine == 0 or theirs < mine):
            value, from_headers = theirs, True
            if mine:
                lowered.append(Lowered(name, mine, theirs))  # type: ignore[arg-type]
        values[name] = value
    limits = replace(configured, rpm=values["rpm"], tpm=values["tpm"])
    return limits, "headers" if from_headers else "config", lowered


def known(limits: PoolLimits) -> bool:
    """Whether a pool has any limit to go by (else it is unlimited until a 429)."""
    return bool(limits.rpm or limits.tpm)
