"""The worker's cost controls against Redis and the breakers: the facts the decisions need
(spend level, a twin's answer, which model is healthy) and the effects they ask for (spend,
lock release, cache writes, verification stats). What to do is decided in `decide.py`."""

from __future__ import annotations

import logging
import time

from redis.asyncio import Redis

from services.common.budget import BudgetLevel, SpendLedger
from services.common.cache import CachedAnswer, ExactCache, cache_key
from services.common.config import AgentqConfig, ModelEntry
from services.common.embedder import EmbedderError
from services.common.models import Task
from services.common.redis_extras import Extras
from services.common.semantic_cache import SemanticCache, VerifyStats
from services.common.topology import Names
from services.worker.actions import WorkOrder
from services.worker.breaker import Breakers
from services.worker.dedup import InflightLocks, owner_of, wait_for_answer
from services.worker.provider import ProviderError, ProviderRateLimited, ProviderRejected

log = logging.getLogger(__name__)
SERVICE = "worker"


class CostControls:
    """What the worker does to spend less: one instance per worker process."""

    def __init__(self, names: Names, config: AgentqConfig, redis: Redis, exact: ExactCache,
                 semantic: SemanticCache | None) -> None:
        self.names = names
        self.config = config
        self.exact = exact
        self.semantic = semantic
        self.breakers = Breakers(config.breaker)
        self.ledger = SpendLedger(redis, names)
        self.locks = InflightLocks(redis, config.cache.inflight_wait_s)
        self.verify_stats = VerifyStats(redis, names)
        self.extras = Extras(SERVICE)  # a Redis outage skips these steps, not the task

    # -- around the call -------------------------------------------------------------------

    def pick(self, tier: str) -> ModelEntry:
        """Return the tier's first model whose breaker is not open."""
        return self.breakers.pick(self.config.tiers[tier].models, time.monotonic())  # type: ignore[index]

    def outcome(self, entry: ModelEntry, error: ProviderError | None) -> None:
        """Tell the entry's breaker how the call went (429s and 4xx say nothing of health)."""
        healthy = None if isinstance(error, ProviderRateLimited | ProviderRejected) else (
            error is None)
        self.breakers.outcome(entry, time.monotonic(), healthy)

    # -- facts for the decisions ----------------------------------------------------------

    async def budget_level(self, tenant: str) -> BudgetLevel:
        """Read the tenant's spend level; unreadable spend reads "ok" (see `budget_plan`)."""
        budget = self.config.tenant(tenant).budget
        if budget is None:
            return "ok"
        return await self.extras.attempt("budget", self.ledger.level(tenant, budget), "ok")

    async def twin_answer(self, order: WorkOrder) -> CachedAnswer | None:
        """Take the task's in-flight lock, or wait for the twin that holds it; return the
        answer a twin's call left in the cache (None: call the provider, owning the lock if
        it is free)."""
        task, routed = order.task, order.routed_tier
        key = cache_key(self.names, task, routed)
        extras = self.extras
        if await extras.attempt("dedup", self.locks.acquire(key, owner_of(task)), True):
            # A twin may have finished between the router's cache lookup and now.
            answer = await extras.attempt("cache", self.exact.get(task, routed), None)
            if answer is not None:
                await extras.attempt("dedup", self.locks.release(key, owner_of(task)), None)
            return answer
        answer = await wait_for_answer(
            lambda: extras.attempt("cache", self.exact.get(task, routed), None),
            lambda: extras.attempt("dedup", self.locks.held(key), False),
            self.config.cache.inflight_wait_s)
        if answer is None:  # call ourselves; own the key if free
            await extras.attempt("dedup", self.locks.acquire(key, owner_of(task)), True)
        return answer

    # -- effects (run by act.py) -----------------------------------------------------------

    async def charge(self, tenant: str, usd: float) -> None:
        await self.extras.attempt("spend", self.ledger.add(tenant, usd), None)

    async def release(self, task: Task, routed_tier: str) -> None:
        key = cache_key(self.names, task, routed_tier)
        await self.extras.attempt("dedup", self.locks.release(key, owner_of(task)), None)

    async def remember(self, task: Task, answer: CachedAnswer, tiers: tuple[str, ...],
                       semantic_tier: str | None) -> None:
        for cache_tier in tiers:
            await self.extras.attempt("cache", self.exact.put(task, cache_tier, answer), None)
        if self.semantic is not None and semantic_tier is not None:
            try:
                await self.extras.attempt("semantic cache",
                                          self.semantic.put(task, semantic_tier, answer), None)
            except EmbedderError as exc:
                log.warning("semantic cache write of %s skipped: %s", task.id, exc)

    async def record_verification(self, key: str, agreed: bool) -> None:
        await self.extras.attempt("verification stats", self.verify_stats.record(agreed), None)
        if not agreed and self.semantic is not None:
            await self.extras.attempt("semantic cache", self.semantic.evict(key), None)
