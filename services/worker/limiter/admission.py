"""One acquire step on a pool (pause, fair share, then both buckets): the pure twin of the Lua."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from services.worker.limiter.bucket import DEFAULT_BURST_S, BucketState, call_interval, decide
from services.worker.limiter.fairness import (
    FairParams,
    TenantState,
    effective_weight,
    fair_wait,
    joining_vt,
)

# "timeout" is SharedLimiter's own: a Redis call that timed out once, retried (never a script's).
# "hold" is a pause: the value is kept, it is the `reason` label of agentq_limiter_denials_total.
Reason = Literal["ok", "hold", "fair", "rate", "timeout"]


@dataclass(frozen=True)
class PoolParams:
    """A pool's limits and fairness settings, as the script receives them."""

    rpm: float
    tpm: float
    fair: FairParams
    burst_s: float = DEFAULT_BURST_S
    jitter: float = 0.0  # a wait is lengthened by up to this fraction, at random


@dataclass(frozen=True)
class PoolState:
    """Everything the script keeps in Redis for one pool."""

    requests: BucketState | None = None
    tokens: BucketState | None = None
    paused_until: float = 0.0
    tenants: dict[str, TenantState] = field(default_factory=dict)


@dataclass(frozen=True)
class Request:
    """Who asks, for how many tokens."""

    tenant: str
    cost: float
    weight: float = 1.0
    min_share: float = 0.0
    # How many callers poll the pool's buckets in all (the asking worker's estimate), and a
    # uniform random number in [0, 1): a capacity wait is spread over the next `contenders`
    # calls' worth of refill, so that the pollers come back about one per call, not as a herd.
    contenders: float = 1.0
    u: float = 0.0


@dataclass(frozen=True)
class Outcome:
    """The answer to one acquire step."""

    granted: bool
    wait_s: float
    reason: Reason
    requests_level: float | None = None  # None = unlimited or not looked at (pause)
    tokens_level: float | None = None
    w_eff: float = 1.0  # the weight the tenant's virtual time advanced by
    vt: float = 0.0


def _others(state: PoolState, tenant: str, now: float) -> tuple[bool, float | None, float]:
    """Return whether the tenant is active, and the other active tenants' min vt and weight."""
    # Lua walks the active set in score order; summing in the same order keeps floats equal.
    active = sorted(((t.active_until, name, t) for name, t in state.tenants.items()
                     if t.active_until is not None and t.active_until > now),
                    key=lambda row: (row[0], row[1]))
    others = [t for _, name, t in active if name != tenant]
    weight = 0.0
    for t in others:
        weight = weight + t.weight
    return len(others) < len(active), min((t.vt for t in others), default=None), weight


def spread(wait: float, interval: float, req: Request, params: PoolParams) -> float:
    """Lengthen a wait at random: by up to `jitter` of it plus a call's refill per contender."""
    return wait + req.u * (params.jitter * wait + (req.contenders - 1) * interval)


def admit(state: PoolState, req: Request, params: PoolParams,
          now: float) -> tuple[Outcome, PoolState]:
    """Decide one acquire step at `now` and return the pool's next state."""
    if state.paused_until > now:
        return Outcome(False, state.paused_until - now, "hold"), state

    is_active, slowest, others_weight = _others(state, req.tenant, now)
    mine = state.tenants.get(req.tenant)
    vt = joining_vt(None if mine is None else mine.vt, slowest, params.fair.window, is_active)
    w_eff = effective_weight(req.weight, req.min_share, others_weight)

    wait = 0.0
    reason: Reason = "ok"
    decision = None
    if slowest is not None and vt - slowest > params.fair.window:
        reason = "fair"
        wait = fair_wait(vt, slowest, others_weight + req.weight, params.tpm, params.fair)
        wait = spread(wait, 0.0, req, params)  # a tenant's pollers need not come as a herd
    else:
        decision = decide(state.requests, state.tokens, params.rpm, params.tpm, req.cost, now,
                          params.burst_s)
        if decision.granted:
            vt = vt + req.cost / w_eff
        else:
            reason = "rate"
            wait = spread(decision.wait_s, call_interval(params.rpm, params.tpm, req.cost,
                                                         params.burst_s), req, params)

    tenants = {name: (t if t.active_until is None or t.active_until > now
                      else replace(t, active_until=None))
               for name, t in state.tenants.items()}
    until = now + wait + params.fair.grace_s
    previous = None if mine is None or not is_active else mine.active_until
    tenants[req.tenant] = TenantState(vt, req.weight,
                                      until if previous is None else max(previous, until))
    next_state = replace(state, tenants=tenants)
    if decision is not None:
        next_state = replace(next_state, requests=decision.requests_state,
                             tokens=decision.tokens_state)
    outcome = Outcome(reason == "ok", wait, reason,
                      None if decision is None else decision.requests_level,
                      None if decision is None else decision.tokens_level, w_eff, vt)
    return outcome, next_state
