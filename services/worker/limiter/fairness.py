"""Weighted fair shares of a pool's tokens across tenants, by virtual time (pure arithmetic).

Each tenant has a virtual time `vt`: the tokens it was granted divided by its weight. While
several tenants are backlogged ("active"), a tenant whose `vt` leads the slowest active
tenant's by more than a window waits, so over any backlogged period the tokens served track
the weights. `limiter.lua` runs the same arithmetic atomically; `admission.py` composes it.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_MIN_SHARE = 0.95  # a guaranteed share of 1 would make the tenant's virtual time stand still


@dataclass(frozen=True)
class FairParams:
    """How strictly shares are enforced in one pool."""

    window: float  # normalised tokens a tenant may lead the slowest active tenant by
    grace_s: float = 0.5  # a tenant stays active this long after the wait it was told
    min_wait_s: float = 0.01  # floors the recheck interval, so waiting never spins
    max_wait_s: float = 1.0  # caps it, so a tenant that goes idle releases the others soon


@dataclass(frozen=True)
class TenantState:
    """One tenant's standing in a pool."""

    vt: float
    weight: float
    active_until: float | None = None  # None = not backlogged


def effective_weight(weight: float, min_share: float, others_weight: float) -> float:
    """Return the weight that gives a tenant at least `min_share` next to the others."""
    if min_share > 0 and others_weight > 0:
        return max(weight, min_share * others_weight / (1 - min_share))
    return weight


def joining_vt(vt: float | None, slowest: float | None, window: float, active: bool) -> float:
    """Return the virtual time a tenant competes with, clamped when it (re)joins the backlog.

    Idling banks no credit (a returning tenant starts at the slowest active one), and an old
    lead is forgiven down to the edge of the window, so re-joining is never a penalty either.
    """
    if slowest is not None and not active:
        if vt is None or vt < slowest:
            return slowest
        if vt > slowest + window:
            return slowest + window
        return vt
    return 0.0 if vt is None else vt


def fair_wait(vt: float, slowest: float, total_weight: float, tpm: float,
              params: FairParams) -> float:
    """Return how long a leading tenant waits: until the slowest could catch up at its share."""
    if tpm > 0:
        # The slowest tenant's vt advances at (tpm/60) / total_weight per second.
        wait = (vt - slowest - params.window) * total_weight / (tpm / 60)
    else:
        wait = params.max_wait_s
    if wait < params.min_wait_s:
        return params.min_wait_s
    if wait > params.max_wait_s:
        return params.max_wait_s
    return wait
