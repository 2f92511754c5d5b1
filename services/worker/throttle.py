"""Hold every provider call to the shared RPM/TPM budgets of the pools it draws from.

Decisions and limiter bookkeeping only: `Throttle.grant` returns a `Permit` (or ends the
wait), `Throttle.refused` holds the pools after a 429 and returns what the delivery does
next (`after_refusal`); `services.worker.calls.ProviderCalls` makes the call in between.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from services.common.config import ModelEntry
from services.common.models import Task, Usage
from services.common.tokens import count_messages
from services.worker.limiter import (
    Grant,
    PoolLimits,
    SharedLimiter,
    model_pool,
    retry_after_from_headers,
)
from services.worker.limiter.learned import LearnedLimits
from services.worker.provider import (
    CapacityExhausted,
    Completion,
    ProviderRateLimited,
)
from services.worker.retry import capacity_left_s

# What a call without max_tokens is charged before its usage is known: OpenAI's own
# rate limiter reserves max_tokens, and agents rarely ask for long answers.
DEFAULT_COMPLETION_ESTIMATE = 256
# Correcting drift from x-ratelimit-remaining-* costs a Redis round trip: once in a while is
# enough to follow the provider's view.
OBSERVE_INTERVAL_S = 0.5
# A grant that waited longer than this was at the pool's limit: the adaptive rule's signal
# that the limit, not the demand, set the pace.
SATURATED_WAIT_S = 0.001
# How long a 429 without a hint holds a call that has no pool to hold.
UNPACED_HOLD_S = 1.0
IN_HAND_WAIT_S = 300.0


def reserved_completion(task: Task) -> int:
    return task.max_tokens or DEFAULT_COMPLETION_ESTIMATE


def estimate_tokens(task: Task, entry: ModelEntry | None = None) -> int:
    """Estimate what a call will count against TPM: prompt plus the answer it may write,
    counted with the tokenizer of the model that will answer (when known)."""
    model = entry.model if entry else None
    tokenizer = entry.tokenizer if entry else None
    return (count_messages((m.model_dump() for m in task.messages), model=model,
                           tokenizer=tokenizer) + reserved_completion(task))


def charged_tokens(task: Task, usage: Usage, counts: str) -> int:
    """Return what the provider's TPM limit counted for a finished call.

    A provider that reserves max_tokens at admission keeps them even when the answer is
    short; crediting them back would let the pool admit more than the provider does (429s).
    The real prompt count still replaces the estimate.
    """
    if counts == "used":
        return usage.prompt_tokens + usage.completion_tokens
    return usage.prompt_tokens + max(usage.completion_tokens, reserved_completion(task))


def pools_of(entry: ModelEntry, limited: Mapping[str, PoolLimits]) -> list[str]:
    """Return the limited pools a model entry draws from: its provider key and its own.

    Every provider has a pool, but one with no limits known (configured, advertised or
    adapted after a 429) has nothing to pace yet: its calls skip the limiter.
    """
    names = [entry.provider, model_pool(entry.provider, entry.model)]
    return [name for name in names
            if name in limited and (limited[name].rpm or limited[name].tpm)]


@dataclass
class CallClock:
    """One delivery's waits for capacity, bounded by their own budget rather than attempts."""

    limit_s: float = math.inf  # AGENTQ_RATE_LIMIT_WAIT_S
    since: float | None = None  # epoch s of the task's first rate-limited wait (a header)
    limiter_s: float = 0.0  # time waiting for capacity: grants, holds, 429s
    llm_s: float = 0.0  # time in provider calls, 429s included
    rate_limited: int = 0  # 429s answered to this delivery
    last: str = "no capacity granted"  # the last 429's message, named when the wait ends
    # After a 429, a delivery that has waited this long in hand goes back to wait in a delay
    # queue (no attempt spent): RabbitMQ closes a channel whose delivery stays unacked past
    # its consumer_timeout (15 min in deploy/, 30 by default).
    in_hand_s: float = IN_HAND_WAIT_S

    def left_s(self, now: float) -> float:
        return capacity_left_s(self.since, now, self.limit_s)

    @contextmanager
    def in_call(self) -> Iterator[None]:
        """Count the body's time as time in a provider call (whatever it raises)."""
        started = time.monotonic()
        try:
            yield
        finally:
            self.llm_s += time.monotonic() - started

    def exhausted(self, provider: str) -> CapacityExhausted:
        waited = time.time() - (self.since if self.since is not None else time.time())
        return CapacityExhausted(
            f"waited {waited:.0f} s for capacity on provider {provider!r} "
            f"({self.rate_limited} answers 429 in this delivery); AGENTQ_RATE_LIMIT_WAIT_S is "
            f"{self.limit_s:.0f} s. Last: {self.last}")


# What a delivery does after a 429, its pool held: call again once the hold lets it, fail
# `rate_limited` (its wait budget is spent), or go back to wait in a delay queue.
AfterRefusal = Literal["again", "exhausted", "give_back"]


def after_refusal(clock: CallClock, now: float, in_hand_for_s: float) -> AfterRefusal:
    """Decide what a delivery in hand for `in_hand_for_s` does after a 429 at epoch `now`."""
    if clock.left_s(now) <= 0:
        return "exhausted"
    if in_hand_for_s >= clock.in_hand_s:
        return "give_back"  # its wait budget travels in the message's header
    return "again"


@dataclass(frozen=True)
class Permit:
    """Capacity for one call: a grant from every limited pool its model entry draws from."""

    entry: ModelEntry
    grants: tuple[Grant, ...]

    @property
    def saturated(self) -> bool:
        return any(g.waited_s > SATURATED_WAIT_S for g in self.grants)


class Throttle:
    """Grant a call capacity from its pools, true the grants up after it, hold the pools on a
    429; the caller makes the call (services.worker.calls)."""

    def __init__(self, limiter: SharedLimiter, tpm_counts: Mapping[str, str],
                 learned: LearnedLimits | None = None) -> None:
        self.limiter = limiter
        self.learned = learned
        self._tpm_counts = dict(tpm_counts)  # provider -> "reserved" | "used"
        self._observed: dict[str, float] = {}

    async def grant(self, entry: ModelEntry, task: Task, clock: CallClock) -> Permit:
        """Wait until every pool of `entry` grants the call, within what is left of the
        task's wait budget (else CapacityExhausted)."""
        # The limits in force, learned ones included, at each try.
        pools = pools_of(entry, self.limiter.limits)
        tokens = estimate_tokens(task, entry)
        began, started = time.time(), time.monotonic()
        grants: list[Grant] = []
        try:
            left = clock.left_s(began)
            # A budget spent on earlier deliveries still lets a call through that needs no wait.
            async with asyncio.timeout(max(left, 0.01) if math.isfinite(left) else None):
                for pool in pools:
                    grants.append(await self.limiter.acquire(pool, task.tenant, tokens))
        except TimeoutError:
            await self.true_up(grants, 0)
            if clock.since is None:
                clock.since = began
            raise clock.exhausted(entry.provider) from None
        finally:
            clock.limiter_s += time.monotonic() - started
        return Permit(entry, tuple(grants))

    async def answered(self, permit: Permit, task: Task, completion: Completion) -> None:
        """After an answer: charge the grants what the call really used, learn from it."""
        entry = permit.entry
        counts = self._tpm_counts.get(entry.provider, "reserved")
        await self.true_up(permit.grants, charged_tokens(task, completion.usage, counts))
        if self.learned is not None:  # first: the answer may advertise the limits
            await self.learned.answered(entry.provider, completion.headers, permit.saturated,
                                        entry.model)
        await self._observe(pools_of(entry, self.limiter.limits), completion.headers)

    async def failed(self, permit: Permit) -> None:
        """After a failed call (not a 429): it used no tokens."""
        await self.true_up(permit.grants, 0)

    async def refused(self, permit: Permit, exc: ProviderRateLimited, clock: CallClock,
                      in_hand_for_s: float) -> AfterRefusal:
        """After a 429: learn from it, hold the pools in force as the provider asks, and
        decide whether the delivery calls again (`after_refusal`)."""
        entry = permit.entry
        clock.rate_limited += 1
        clock.last = str(exc)
        if clock.since is None:
            clock.since = time.time()
        await self.true_up(permit.grants, 0)
        if self.learned is not None:
            await self.learned.refused(entry.provider, exc.headers, entry.model)
        pools = pools_of(entry, self.limiter.limits)
        for pool in pools:
            await self.limiter.rate_limited(pool, exc.headers)
        if not pools:  # nothing to hold (no limiter to learn with): wait here instead
            started = time.monotonic()
            hint = retry_after_from_headers(exc.headers)
            await asyncio.sleep(min(clock.left_s(time.time()),
                                    UNPACED_HOLD_S if hint is None else hint))
            clock.limiter_s += time.monotonic() - started
        return after_refusal(clock, time.time(), in_hand_for_s)

    async def true_up(self, grants: Iterable[Grant], used: int) -> None:
        """Charge each grant the tokens the call really used instead of the estimate."""
        for grant in grants:
            await self.limiter.true_up(grant, used)

    async def _observe(self, pools: list[str], headers: Mapping[str, Any]) -> None:
        now = time.monotonic()
        for pool in pools:
            if now - self._observed.get(pool, 0.0) >= OBSERVE_INTERVAL_S:
                self._observed[pool] = now
                await self.limiter.observe_headers(pool, headers)
