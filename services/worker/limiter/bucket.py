"""Token-bucket arithmetic for requests and tokens: the pure reference `limiter.lua` mirrors.

Every expression here is written in the same order as in the Lua script so that both produce
the same doubles; tests compare the two on random sequences. A limit of 0 means "no limit
known": that bucket always has capacity. A missing state means a full bucket, which is why
Redis may expire an idle bucket once it would have refilled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Nine tenths of a minute's worth. The provider's own bucket holds a whole minute and refills
# at the same rate as ours, so once our burst is spent its bucket still keeps a tenth of a
# minute in hand: calls that reach it bunched up by network jitter find capacity, not a 429.
DEFAULT_BURST_S = 54.0


@dataclass(frozen=True)
class BucketState:
    """A bucket's level (requests or tokens) as of `updated_at` (seconds)."""

    level: float
    updated_at: float


@dataclass(frozen=True)
class Decision:
    """What one request gets from the two buckets, and what to store afterwards."""

    granted: bool
    wait_s: float  # 0 when granted; else the time until both buckets have capacity
    requests_level: float | None  # level after the decision; None = unlimited
    tokens_level: float | None
    requests_state: BucketState | None  # state to store; None = nothing stored (full)
    tokens_state: BucketState | None


def capacity(limit: float, burst_s: float = DEFAULT_BURST_S) -> float:
    """Return the bucket size: `burst_s` seconds of the per-minute limit."""
    return limit * burst_s / 60


def level_at(state: BucketState | None, limit: float, now: float,
             burst_s: float = DEFAULT_BURST_S) -> float:
    """Return the level at `now`: refilled at limit/60 per second, up to capacity."""
    cap = capacity(limit, burst_s)
    if state is None:
        return cap
    elapsed = max(0.0, now - state.updated_at)  # a clock step backwards refills nothing
    return min(cap, state.level + elapsed * (limit / 60))


def shortfall(level: float, need: float, limit: float) -> float:
    """Return the seconds until `level` reaches `need` at the limit's refill rate."""
    if level >= need:
        return 0.0
    return (need - level) / (limit / 60)


def call_interval(rpm: float, tpm: float, cost_tokens: float,
                  burst_s: float = DEFAULT_BURST_S) -> float:
    """Return the seconds the pool takes to refill one call's worth (its binding bucket)."""
    interval = 0.0
    if rpm > 0:
        interval = 1 / (rpm / 60)
    if tpm > 0:
        tokens = min(cost_tokens, capacity(tpm, burst_s)) / (tpm / 60)
        if tokens > interval:
            interval = tokens
    return interval


def expiry_ms(level: float, limit: float, burst_s: float = DEFAULT_BURST_S) -> int:
    """Return how long to keep a stored bucket: until it is full again, plus a second."""
    return math.ceil((capacity(limit, burst_s) - level) / (limit / 60) * 1000) + 1000


def _check(state: BucketState | None, limit: float, amount: float, now: float,
           burst_s: float) -> tuple[float | None, float]:
    """Return a bucket's level now (None if unlimited) and its wait for `amount`."""
    if limit <= 0:
        return None, 0.0
    level = level_at(state, limit, now, burst_s)
    # A request larger than the bucket waits for a full bucket and leaves it in debt,
    # rather than waiting forever.
    need = min(amount, capacity(limit, burst_s))
    return level, shortfall(level, need, limit)


def decide(requests_state: BucketState | None, tokens_state: BucketState | None,
           rpm: float, tpm: float, cost_tokens: float, now: float,
           burst_s: float = DEFAULT_BURST_S) -> Decision:
    """Take 1 request and `cost_tokens` tokens if both buckets have them, else nothing."""
    req_level, req_wait = _check(requests_state, rpm, 1, now, burst_s)
    tok_level, tok_wait = _check(tokens_state, tpm, cost_tokens, now, burst_s)
    if req_wait > 0 or tok_wait > 0:
        return Decision(False, max(req_wait, tok_wait), req_level, tok_level,
                        requests_state, tokens_state)
    req_state = tok_state = None
    if req_level is not None:
        req_level = req_level - 1
        req_state = BucketState(req_level, now)
    if tok_level is not None:
        tok_level = tok_level - cost_tokens
        tok_state = BucketState(tok_level, now)
    return Decision(True, 0.0, req_level, tok_level, req_state, tok_state)


def true_up(tokens_state: BucketState | None, delta: float, tpm: float, now: float,
           burst_s: float = DEFAULT_BURST_S) -> BucketState | None:
    """Debit `delta` more tokens (credit back when negative) once the real usage is known."""
    if tpm <= 0:
        return tokens_state
    level = min(capacity(tpm, burst_s), level_at(tokens_state, tpm, now, burst_s) - delta)
    return BucketState(level, now)


def correct(state: BucketState | None, remaining: float | None, limit: float, now: float,
            burst_s: float = DEFAULT_BURST_S) -> BucketState | None:
    """Lower a bucket to what the provider says remains; never raise it."""
    if limit <= 0 or remaining is None:
        return state
    if remaining < level_at(state, limit, now, burst_s):
        return BucketState(remaining, now)
    return state


def seed(state: BucketState | None, level: float | None, limit: float, now: float,
         burst_s: float = DEFAULT_BURST_S) -> BucketState | None:
    """Write `level` into a bucket Redis lost (missing); leave an existing one alone.

    A restarted Redis reads every bucket as full; seeding only the missing ones never lowers
    a bucket that other workers are drawing on.
    """
    if limit <= 0 or level is None or state is not None:
        return state
    return BucketState(min(level, capacity(limit, burst_s)), now)


def depletion(level: float | None, limit: float, burst_s: float = DEFAULT_BURST_S) -> float:
    """Return the bucket's depletion: 0 (full bucket) to 1 (empty or in debt)."""
    if level is None or limit <= 0:
        return 0.0
    return min(1.0, max(0.0, 1 - level / capacity(limit, burst_s)))
