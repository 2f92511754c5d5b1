"""Hold every provider call to the shared RPM/TPM budgets of the pools it draws from."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

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
    ProviderError,
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
    # After a 429, a delivery that has waited this long in hand goes back to wait in a delay
    # queue (no attempt spent): RabbitMQ closes a channel whose delivery stays unacked past
    # its consumer_timeout (15 min in deploy/, 30 by default).
    in_hand_s: float = IN_HAND_WAIT_S

    def left_s(self, now: float) -> float:
        return capacity_left_s(self.since, now, self.limit_s)

    def exhausted(self, provider: str, last: str) -> CapacityExhausted:
        waited = time.time() - (self.since if self.since is not None else time.time())
        return CapacityExhausted(
            f"waited {waited:.0f} s for capacity on provider {provider!r} "
            f"({self.rate_limited} answers 429 in this delivery); AGENTQ_RATE_LIMIT_WAIT_S is "
            f"{self.limit_s:.0f} s. Last: {last}")


class Throttle:
    """Acquire before a call, settle after it, hold the pool on a 429 and call again."""

    def __init__(self, limiter: SharedLimiter, tpm_counts: Mapping[str, str],
                 learned: LearnedLimits | None = None) -> None:
        self.limiter = limiter
        self.learned = learned
        self._tpm_counts = dict(tpm_counts)  # provider -> "reserved" | "used"
        self._observed: dict[str, float] = {}

    async def call(self, entry: ModelEntry, task: Task,
                   send: Callable[[], Awaitable[Completion]],
                   clock: CallClock | None = None) -> Completion:
        """Run `send` once every pool of `entry` grants it capacity; on a 429 hold the pool
        and go again, until `clock`'s wait budget is spent (then CapacityExhausted)."""
        clock = clock or CallClock()
        delivered = time.monotonic()
        tokens = estimate_tokens(task, entry)
        last = "no capacity granted"
        while True:
            # The limits in force, learned ones included, at each try.
            pools = pools_of(entry, self.limiter.limits)
            grants = await self._acquire(pools, task.tenant, tokens, clock, entry.provider, last)
            started = time.monotonic()
            try:
                completion = await send()
            except ProviderRateLimited as exc:
                clock.llm_s += time.monotonic() - started
                clock.rate_limited += 1
                if clock.since is None:
                    clock.since = time.time()
                last = str(exc)
                await self._refused(entry, grants, exc.headers, clock)
                if clock.left_s(time.time()) <= 0:
                    raise clock.exhausted(entry.provider, last) from None
                if time.monotonic() - delivered >= clock.in_hand_s:
                    raise  # to a delay queue, its wait budget in the message's header
                continue  # the hold it set makes the next acquire wait as the provider asked
            except ProviderError:
                clock.llm_s += time.monotonic() - started
                await self._settle(grants, 0)  # a failed call used no tokens
                raise
            clock.llm_s += time.monotonic() - started
            break
        counts = self._tpm_counts.get(entry.provider, "reserved")
        await self._settle(grants, charged_tokens(task, completion.usage, counts))
        if self.learned is not None:  # first: the answer may advertise the limits
            saturated = any(g.waited_s > SATURATED_WAIT_S for g in grants)
            await self.learned.answered(entry.provider, completion.headers, saturated,
                                        entry.model)
        await self._observe(pools_of(entry, self.limiter.limits), completion.headers)
        return completion

    async def _acquire(self, pools: list[str], tenant: str, tokens: int, clock: CallClock,
                       provider: str, last: str) -> list[Grant]:
        """Take a grant from every pool, within what is left of the task's wait budget."""
        began, started = time.time(), time.monotonic()
        grants: list[Grant] = []
        try:
            left = clock.left_s(began)
            # A budget spent on earlier deliveries still lets a call through that needs no wait.
            async with asyncio.timeout(max(left, 0.01) if math.isfinite(left) else None):
                for pool in pools:
                    grants.append(await self.limiter.acquire(pool, tenant, tokens))
        except TimeoutError:
            await self._settle(grants, 0)
            if clock.since is None:
                clock.since = began
            raise clock.exhausted(provider, last) from None
        finally:
            clock.limiter_s += time.monotonic() - started
        return grants

    async def _refused(self, entry: ModelEntry, grants: list[Grant],
                       headers: Mapping[str, Any], clock: CallClock) -> None:
        """After a 429: learn from it, then hold the pools in force as the provider asks."""
        await self._settle(grants, 0)
        if self.learned is not None:
            await self.learned.refused(entry.provider, headers, entry.model)
        pools = pools_of(entry, self.limiter.limits)
        for pool in pools:
            await self.limiter.rate_limited(pool, headers)
        if not pools:  # nothing to hold (no limiter to learn with): wait here instead
            started = time.monotonic()
            hint = retry_after_from_headers(headers)
            await asyncio.sleep(min(clock.left_s(time.time()),
                                    UNPACED_HOLD_S if hint is None else hint))
            clock.limiter_s += time.monotonic() - started

    async def _settle(self, grants: list[Grant], used: int) -> None:
        for grant in grants:
            await self.limiter.settle(grant, used)

    async def _observe(self, pools: list[str], headers: Mapping[str, Any]) -> None:
        now = time.monotonic()
        for pool in pools:
            if now - self._observed.get(pool, 0.0) >= OBSERVE_INTERVAL_S:
                self._observed[pool] = now
                await self.limiter.observe_headers(pool, headers)

