"""Hold every provider call to the shared RPM/TPM budgets of the pools it draws from."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from services.common.config import ModelEntry
from services.common.models import Task, Usage
from services.common.tokens import count_messages
from services.worker.limiter import Grant, PoolLimits, SharedLimiter, model_pool
from services.worker.provider import Completion, ProviderError, ProviderRateLimited

# What a call without max_tokens is charged before its usage is known: OpenAI's own
# rate limiter reserves max_tokens, and agents rarely ask for long answers.
DEFAULT_COMPLETION_ESTIMATE = 256
# Correcting drift from x-ratelimit-remaining-* costs a Redis round trip: once in a while is
# enough to follow the provider's view.
OBSERVE_INTERVAL_S = 0.5


def reserved_completion(task: Task) -> int:
    return task.max_tokens or DEFAULT_COMPLETION_ESTIMATE


def estimate_tokens(task: Task) -> int:
    """Estimate what a call will count against TPM: prompt plus the answer it may write."""
    return count_messages(m.model_dump() for m in task.messages) + reserved_completion(task)


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
    """Return the limited pools a model entry draws from: its provider key and its own."""
    names = [entry.provider, model_pool(entry.provider, entry.model)]
    return [name for name in names
            if name in limited and (limited[name].rpm or limited[name].tpm)]


class Throttle:
    """Acquire before a call, settle after it, hold the pool on a 429."""

    def __init__(self, limiter: SharedLimiter, pools: Mapping[str, PoolLimits],
                 tpm_counts: Mapping[str, str]) -> None:
        self.limiter = limiter
        self._pools = dict(pools)
        self._tpm_counts = dict(tpm_counts)  # provider -> "reserved" | "used"
        self._observed: dict[str, float] = {}

    async def call(self, entry: ModelEntry, task: Task,
                   send: Callable[[], Awaitable[Completion]]) -> Completion:
        """Run `send` once every pool of `entry` grants it capacity."""
        pools = pools_of(entry, self._pools)
        if not pools:  # no known limits: nothing to share
            return await send()
        tokens = estimate_tokens(task)
        grants = [await self.limiter.acquire(pool, task.tenant, tokens) for pool in pools]
        try:
            completion = await send()
        except ProviderRateLimited as exc:
            await self._refused(grants, exc.headers)
            raise
        except ProviderError:
            await self._settle(grants, 0)  # a failed call used no tokens
            raise
        counts = self._tpm_counts.get(entry.provider, "reserved")
        await self._settle(grants, charged_tokens(task, completion.usage, counts))
        await self._observe(pools, completion.headers)
        return completion

    async def _refused(self, grants: list[Grant], headers: Mapping[str, Any]) -> None:
        for grant in grants:
            await self.limiter.rate_limited(grant.pool, headers)
        await self._settle(grants, 0)

    async def _settle(self, grants: list[Grant], used: int) -> None:
        for grant in grants:
            await self.limiter.settle(grant, used)

    async def _observe(self, pools: list[str], headers: Mapping[str, Any]) -> None:
        now = time.monotonic()
        for pool in pools:
            if now - self._observed.get(pool, 0.0) >= OBSERVE_INTERVAL_S:
                self._observed[pool] = now
                await self.limiter.observe_headers(pool, headers)

