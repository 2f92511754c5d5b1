"""The worker's cost controls around each provider call: budgets, dedup, breakers, cascades,
verification of semantic hits, and cache writes. The worker calls in at three points: `admit`
before the call, `pick`/`settle` around it, `conclude` after it."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Literal

from redis.asyncio import Redis

from services.common.amqp import Bus
from services.common.budget import SpendLedger
from services.common.cache import CachedAnswer, ExactCache, cache_key, cacheable
from services.common.config import AgentqConfig, ModelEntry
from services.common.embedder import EmbedderError
from services.common.guard import answers_agree
from services.common.lanes import LaneDirectory
from services.common.models import ErrorInfo, Latency, Result, Task
from services.common.pricing import premium_baseline
from services.common.publishing import emit, publish_result
from services.common.redis_extras import Extras
from services.common.semantic_cache import SemanticCache, VerifyStats, semantic_cacheable
from services.common.topology import ATTEMPT_HEADER, ROUTE_HEADER
from services.common.work_headers import (
    CASCADE_HEADER,
    HELD_HEADER,
    ROUTED_TIER_HEADER,
    VERIFY_HEADER,
)
from services.worker.breaker import Breakers
from services.worker.cascade import CascadeState, check_answer, next_tier
from services.worker.dedup import InflightLocks, owner_of, wait_for_answer
from services.worker.provider import ProviderError, ProviderRateLimited, ProviderRejected

log = logging.getLogger(__name__)
SERVICE = "worker"


def routed_tier(headers: dict[str, Any], tier: str) -> str:
    value = headers.get(ROUTED_TIER_HEADER)
    return value.decode() if isinstance(value, bytes) else str(value or tier)


def header_text(headers: dict[str, Any], name: str) -> str:
    value = headers.get(name)
    return value.decode() if isinstance(value, bytes) else str(value or "")


class CostControls:
    """What the worker does to spend less: one instance per worker process."""

    def __init__(self, bus: Bus, config: AgentqConfig, redis: Redis, exact: ExactCache,
                 semantic: SemanticCache | None, lanes: LaneDirectory) -> None:
        self.bus = bus
        self.lanes = lanes  # where an escalated task goes: its tenant's lane in the next tier
        self.config = config
        self.exact = exact
        self.semantic = semantic
        self.breakers = Breakers(config.breaker)
        self.ledger = SpendLedger(redis, bus.names)
        self.locks = InflightLocks(redis, config.cache.inflight_wait_s)
        self.verify_stats = VerifyStats(redis, bus.names)
        self.extras = Extras(SERVICE)  # a Redis outage skips these steps, not the task

    # -- around the call -------------------------------------------------------------------

    def pick(self, tier: str) -> ModelEntry:
        """Return the tier's first model whose breaker is not open."""
        return self.breakers.pick(self.config.tiers[tier].models, time.monotonic())  # type: ignore[index]

    def settle(self, entry: ModelEntry, error: ProviderError | None) -> None:
        """Tell the entry's breaker how the call went (429s and 4xx say nothing of health)."""
        healthy = None if isinstance(error, ProviderRateLimited | ProviderRejected) else (
            error is None)
        self.breakers.settle(entry, time.monotonic(), healthy)

    # -- before the call -------------------------------------------------------------------

    async def admit(self, task: Task, tier: str, headers: dict[str, Any]) -> bool:
        """Return whether to call the provider; False when the task was held (back to its lane
        later), failed for its budget, or answered by a twin's call."""
        if not await self._within_budget(task, tier, headers):
            return False
        if not self._dedups(task, headers):
            return True
        routed = routed_tier(headers, tier)
        key = cache_key(self.bus.names, task, routed)
        extras = self.extras
        if await extras.attempt("dedup", self.locks.acquire(key, owner_of(task)), True):
            # A twin may have finished between the router's cache lookup and now.
            answer = await extras.attempt("cache", self.exact.get(task, routed), None)
            if answer is None:
                return True
            await extras.attempt("dedup", self.locks.release(key, owner_of(task)), None)
        else:
            answer = await wait_for_answer(
                lambda: extras.attempt("cache", self.exact.get(task, routed), None),
                lambda: extras.attempt("dedup", self.locks.held(key), False),
                self.config.cache.inflight_wait_s)
            if answer is None:  # call ourselves; own the key if free
                await extras.attempt("dedup", self.locks.acquire(key, owner_of(task)), True)
                return True
        await self._publish_twin_answer(task, headers, answer)
        return False

    def _dedups(self, task: Task, headers: dict[str, Any]) -> bool:
        # An escalation or a verification must call the model; the lock is already settled.
        return cacheable(task) and CASCADE_HEADER not in headers and VERIFY_HEADER not in headers

    async def _within_budget(self, task: Task, tier: str, headers: dict[str, Any]) -> bool:
        budget = self.config.tenant(task.tenant).budget
        # Unreadable spend admits the task: the limiter still bounds the rate, and the spend is
        # counted once Redis is back (SpendLedger keeps what it could not add).
        if budget is None or await self.extras.attempt(
                "budget", self.ledger.level(task.tenant, budget), "ok") != "hard":
            return True
        await emit(self.bus, "budget.hard", SERVICE, tenant=task.tenant, task_id=task.id,
                   tier=tier, action=budget.hard_action)
        if budget.hard_action == "hold":
            held = int(headers.get(HELD_HEADER) or 0) + 1
            await self.lanes.publish_later(self.bus, tier, task, {**headers, HELD_HEADER: held},
                                           budget.hold_s * 1000)
            return False
        result = self._bare_result(task, tier, headers, "failed")
        result.error = ErrorInfo(code="budget_exceeded",
                                 message=f"tenant {task.tenant} is at its hard spend limit")
        await publish_result(self.bus, result, task.reply_to)
        return False

    async def _publish_twin_answer(self, task: Task, headers: dict[str, Any],
                                   answer: CachedAnswer) -> None:
        result = self._bare_result(task, answer.tier, headers, "succeeded")
        result.output, result.model, result.usage = answer.output, answer.model, answer.usage
        result.cache, result.cached_from = "exact", answer.task_id or None
        result.route_reason = f"{result.route_reason};dedup"
        result.cost_saved_usd = premium_baseline(self.config, answer.usage)
        await publish_result(self.bus, result, task.reply_to)
        await emit(self.bus, "task.completed", SERVICE, tenant=task.tenant, task_id=task.id,
                   tier=answer.tier, model=answer.model, cost_usd=0.0, attempts=0, dedup=True)

    def _bare_result(self, task: Task, tier: str, headers: dict[str, Any],
                     status: Literal["succeeded", "failed"]) -> Result:
        now = time.time()
        waited = max(0.0, (now - (task.submitted_at or now)) * 1000)
        return Result(task_id=task.id, tenant=task.tenant, status=status,
                      tier=tier, kind=task.kind, metadata=task.metadata,
                      route_reason=header_text(headers, ROUTE_HEADER),
                      latency_ms=Latency(queue=waited, total=waited))

    # -- after the call --------------------------------------------------------------------

    async def conclude(self, task: Task, tier: str, headers: dict[str, Any],
                       result: Result) -> Result | None:
        """Account for a completed call; return the Result to publish, or None when the task
        escalated to the next tier."""
        await self.extras.attempt("spend", self.ledger.add(task.tenant, result.cost_usd), None)
        prior = CascadeState.from_header(headers.get(CASCADE_HEADER))
        # A client's validator is CPU work of the client's choosing: off the event loop.
        failed_check = None if task.validator is None else \
            await asyncio.to_thread(check_answer, task.validator, result.output)
        if failed_check is not None:
            upper = next_tier(tier, self.config.tenant(task.tenant).ceiling, prior.escalations,
                              self.config.cascade.max_escalations) \
                if self.config.cascade.enabled else None
            if upper is not None:
                await self._escalate(task, tier, upper, headers, prior, result, failed_check)
                return None
        final = self._with_prior_calls(prior, result, valid=failed_check is None)
        if failed_check is not None:
            final.status = "failed"
            final.error = ErrorInfo(code="validation_failed",
                                    message=f"the answer failed the {failed_check} check")
        else:
            await self._verify(task, headers, final)
            await self._remember(task, tier, headers, final)
        await self._release(task, tier, headers)
        return final

    async def abandon(self, task: Task, tier: str, headers: dict[str, Any]) -> None:
        """Let twins waiting on this task call for themselves: it ended without an answer."""
        await self._release(task, tier, headers)

    async def _release(self, task: Task, tier: str, headers: dict[str, Any]) -> None:
        if cacheable(task):
            key = cache_key(self.bus.names, task, routed_tier(headers, tier))
            await self.extras.attempt("dedup", self.locks.release(key, owner_of(task)), None)

    def _with_prior_calls(self, prior: CascadeState, result: Result, valid: bool) -> Result:
        if not prior.calls:
            return result
        calls = prior.plus(result.tier, result.model, result.usage, result.cost_usd, valid)
        total = calls.cost_usd
        return result.model_copy(update={
            "cost_usd": total, "calls": calls.calls,
            "cost_saved_usd": max(0.0, premium_baseline(self.config, result.usage) - total)})

    async def _escalate(self, task: Task, tier: str, upper: str, headers: dict[str, Any],
                        prior: CascadeState, result: Result, why: str) -> None:
        state = prior.plus(tier, result.model, result.usage, result.cost_usd, valid=False)
        reason = f"{header_text(headers, ROUTE_HEADER)};escalated:{tier}->{upper}({why})"
        await self.lanes.publish(
            self.bus, upper, task.tenant, task, priority=task.priority, message_id=task.id,
            headers={**headers, ROUTE_HEADER: reason, ATTEMPT_HEADER: 1,
                     CASCADE_HEADER: state.to_header()})
        await emit(self.bus, "task.escalated", SERVICE, tenant=task.tenant, task_id=task.id,
                   tier=tier, to_tier=upper, kind=task.kind, reason=why,
                   cost_usd=result.cost_usd, spent_usd=state.cost_usd)

    async def _verify(self, task: Task, headers: dict[str, Any], result: Result) -> None:
        """Compare a real answer with the semantic hit it was sampled from; evict a wrong one."""
        raw = header_text(headers, VERIFY_HEADER)
        if not raw:
            return
        sample = json.loads(raw)
        agreed = answers_agree(str(sample.get("output", "")), result.output)
        await self.extras.attempt("verification stats", self.verify_stats.record(agreed), None)
        if not agreed and self.semantic is not None:
            await self.extras.attempt(
                "semantic cache", self.semantic.evict(str(sample.get("key", ""))), None)
        await emit(self.bus, "cache.verify", SERVICE, tenant=task.tenant, task_id=task.id,
                   tier=result.tier, kind=task.kind, agreed=agreed,
                   similarity=sample.get("similarity"))

    async def _remember(self, task: Task, tier: str, headers: dict[str, Any],
                        result: Result) -> None:
        """Cache an answer under the tier the router chose (and the one that answered)."""
        if not cacheable(task):
            return
        answer = CachedAnswer(output=result.output, model=result.model, tier=tier,
                              usage=result.usage, task_id=task.id)
        routed = routed_tier(headers, tier)
        for cache_tier in {routed, tier}:
            await self.extras.attempt("cache", self.exact.put(task, cache_tier, answer), None)
        if (self.semantic is not None and semantic_cacheable(task)
                and self.config.cache.semantic_threshold(task.kind) is not None):
            try:
                await self.extras.attempt("semantic cache",
                                          self.semantic.put(task, routed, answer), None)
            except EmbedderError as exc:
                log.warning("semantic cache write of %s skipped: %s", task.id, exc)
