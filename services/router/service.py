"""The router: decide each task's tier, answer from the cache, or queue it for a worker."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
from typing import Any, Literal

from pydantic import ValidationError

from services.common.amqp import Broker, IncomingMessage, RejectMessage
from services.common.budget import SpendLedger
from services.common.cache import CachedAnswer, ExactCache, cacheable
from services.common.clients import open_clients
from services.common.config import AgentqConfig
from services.common.embedder import EmbedderError, make_embedder
from services.common.lanes import LaneDirectory, LaneRegistry
from services.common.models import Result, Task
from services.common.publishing import emit, publish_result
from services.common.redis_extras import Extras
from services.common.results import from_cache
from services.common.semantic_cache import (
    SemanticCache,
    SemanticHit,
    sampled_for_verification,
    semantic_cacheable,
)
from services.common.semantic_index import SemanticIndex
from services.common.settings import Settings
from services.common.tokens import count_messages
from services.common.topology import ATTEMPT_HEADER, ROUTE_HEADER, declare_topology
from services.common.work_headers import ROUTED_TIER_HEADER, VERIFY_HEADER
from services.router.metrics import ROUTED
from services.router.policy import RouteDecision, choose_tier

log = logging.getLogger(__name__)
SERVICE = "router"


def cache_hit_result(task: Task, decision: RouteDecision, hit: CachedAnswer,
                     config: AgentqConfig, now: float,
                     cache: Literal["exact", "semantic"] = "exact") -> Result:
    """Build the Result of a task answered from the cache."""
    return from_cache(task, hit, config, cache=cache, route_reason=decision.reason, now=now)


class Router:
    """Consume accepted tasks and send each on its way."""

    def __init__(self, bus: Broker, cache: ExactCache, config: AgentqConfig,
                 semantic: SemanticCache | None = None,
                 ledger: SpendLedger | None = None, lanes: LaneDirectory | None = None) -> None:
        self.bus = bus
        self.lanes = lanes  # each tenant's work waits in its own lane (None: the tier's queue)
        self.cache = cache
        self.config = config
        self.semantic = semantic
        self.ledger = ledger
        self.extras = Extras(SERVICE)  # a Redis outage skips these steps, not the task

    async def handle(self, message: IncomingMessage) -> None:
        try:
            task = Task.model_validate_json(message.body)
        except ValidationError as exc:
            raise RejectMessage(f"not a Task: {exc.errors()[0]['msg']}") from None
        budget = self.config.tenant(task.tenant).budget
        level = await self.extras.attempt("budget", self.ledger.level(task.tenant, budget),
                                          "ok") if self.ledger else "ok"
        decision = choose_tier(task, self.config, count_messages(
            m.model_dump() for m in task.messages), budget=level)
        if level == "soft":
            await emit(self.bus, "budget.soft", SERVICE, tenant=task.tenant, task_id=task.id,
                       tier=decision.tier, reason=decision.reason)
        if cacheable(task):
            hit = await self.extras.attempt("cache", self.cache.get(task, decision.tier), None)
            if hit is not None:
                await self.answer(task, decision, hit, "exact")
                return
        headers: dict[str, Any] = {ROUTE_HEADER: decision.reason, ATTEMPT_HEADER: 1,
                                   ROUTED_TIER_HEADER: decision.tier}
        semantic = await self.semantic_hit(task, decision.tier)
        if semantic is not None:
            if not sampled_for_verification(task.id, self.config.cache.verify_share):
                decision = RouteDecision(decision.tier,
                                         f"{decision.reason};semantic:{semantic.similarity:.3f}")
                await self.answer(task, decision, semantic.answer, "semantic")
                return
            # Sampled: ask the model for real and let the worker compare the two answers.
            decision = RouteDecision(decision.tier, f"{decision.reason};verify")
            headers[ROUTE_HEADER] = decision.reason
            headers[VERIFY_HEADER] = json.dumps({"key": semantic.key,
                                                 "output": semantic.answer.output,
                                                 "similarity": semantic.similarity})
        if self.lanes is not None:
            await self.lanes.publish(self.bus, decision.tier, task.tenant, task,
                                     priority=task.priority, message_id=task.id, headers=headers)
        else:
            await self.bus.publish(self.bus.names.work, decision.tier, task,
                                   priority=task.priority, message_id=task.id, headers=headers)
        ROUTED.labels(tier=decision.tier, cache="miss").inc()
        await emit(self.bus, "task.routed", SERVICE, tenant=task.tenant, task_id=task.id,
                   tier=decision.tier, reason=decision.reason, kind=task.kind, cache="miss")

    async def semantic_hit(self, task: Task, tier: str) -> SemanticHit | None:
        """Look the task up in the semantic cache, when its kind and settings allow it."""
        threshold = self.config.cache.semantic_threshold(task.kind)
        if self.semantic is None or threshold is None or not semantic_cacheable(task):
            return None
        try:
            return await self.extras.attempt(
                "semantic cache", self.semantic.lookup(task, tier, threshold), None)
        except EmbedderError as exc:  # no embedding, no semantic hit: the task still runs
            log.warning("semantic lookup of %s skipped: %s", task.id, exc)
            return None

    async def answer(self, task: Task, decision: RouteDecision, hit: CachedAnswer,
                     cache: Literal["exact", "semantic"]) -> None:
        result = cache_hit_result(task, decision, hit, self.config, time.time(), cache)
        await publish_result(self.bus, result, task.reply_to)
        ROUTED.labels(tier=decision.tier, cache=cache).inc()
        await emit(self.bus, "task.routed", SERVICE, tenant=task.tenant, task_id=task.id,
                   tier=decision.tier, reason=decision.reason, kind=task.kind, cache=cache)


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Run the router until `stop` is set."""
    config = settings.tier_table()
    async with open_clients(settings, SERVICE) as clients:
        names = clients.names
        bus = await clients.bus()
        redis = clients.redis()
        embedder = make_embedder(config)
        clients.closing(embedder.close)
        await declare_topology(await bus.connection.channel(), names)
        semantic = SemanticCache(redis, names, embedder, config.cache.semantic_ttl_s,
                                 SemanticIndex(embedder.dimensions))
        await semantic.sync(force=True)  # load every live entry before the first lookup
        gc.freeze()  # full collections skip what start-up built (the index among it): short pauses
        exact = ExactCache(redis, names, config.cache.exact_ttl_s or settings.cache_ttl_s)
        router = Router(bus, exact, config, semantic, SpendLedger(redis, names),
                        LaneDirectory(await bus.connection.channel(),
                                      LaneRegistry(redis, names, settings.lane_idle_s,
                                                   settings.lane_retire_s)))
        await bus.consume(names.tasks, router.handle, prefetch=200)
        log.info("router consuming %s", names.tasks)
        await stop.wait()
        await bus.stop_consuming(grace_s=10)
