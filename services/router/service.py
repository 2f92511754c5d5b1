"""The router: decide each task's tier, answer from the cache, or queue it for a worker."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Mapping
from typing import Any, Literal

from services.common.amqp import Broker, IncomingMessage, RejectMessage
from services.common.budget import BudgetLevel, SpendLedger
from services.common.cache import CachedAnswer, ExactCache
from services.common.clients import open_clients
from services.common.config import AgentqConfig
from services.common.embedder import EmbedderError, make_embedder
from services.common.models import Result, Task
from services.common.pair_check import make_pair_checker
from services.common.publishing import emit, publish_result
from services.common.redis_extras import Extras
from services.common.results import from_cache
from services.common.semantic_cache import SemanticCache, SemanticHit
from services.common.semantic_index import SemanticIndex
from services.common.settings import Settings
from services.common.topology import declare_topology
from services.lanes.directory import LaneDirectory
from services.lanes.registry import LaneRegistry
from services.router.decide import (
    Answer,
    Defer,
    Emit,
    Found,
    Plan,
    Reject,
    Route,
    asks_exact,
    read_task,
    route_plan,
    semantic_threshold,
    tier_for,
)
from services.router.metrics import ROUTED
from services.router.policy import RouteDecision

log = logging.getLogger(__name__)
SERVICE = "router"


def cache_hit_result(task: Task, decision: RouteDecision, hit: CachedAnswer,
                     config: AgentqConfig, now: float,
                     cache: Literal["exact", "semantic"] = "exact") -> Result:
    """Build the Result of a task answered from the cache."""
    return from_cache(task, hit, config, cache=cache, route_reason=decision.reason, now=now)


class Router:
    """Consume accepted tasks and send each on its way: read, decide (`decide.py`), act."""

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
        task = read_task(message.body)
        if isinstance(task, Reject):
            await self.act((task,))
            return
        level = await self.budget_level(task)
        route = tier_for(task, self.config, level)
        found = await self.look_up(task, route.tier)
        await self.act(route_plan(task, route, level, found, self.config, time.time()))

    async def budget_level(self, task: Task) -> BudgetLevel:
        """Read the tenant's spend level; `ok` without a ledger or while Redis is down."""
        if self.ledger is None:
            return "ok"
        budget = self.config.tenant(task.tenant).budget
        return await self.extras.attempt("budget", self.ledger.level(task.tenant, budget), "ok")

    async def look_up(self, task: Task, tier: str) -> Found:
        """Ask the exact cache, then (on a miss) the semantic one, each when the task allows."""
        if asks_exact(task):
            hit = await self.extras.attempt("cache", self.cache.get(task, tier), None)
            if hit is not None:
                return Found(exact=hit)
        return Found(semantic=await self.semantic_hit(task, tier))

    async def semantic_hit(self, task: Task, tier: str) -> SemanticHit | None:
        """Look the task up in the semantic cache, when its kind and settings allow it."""
        threshold = semantic_threshold(task, self.config)
        if self.semantic is None or threshold is None:
            return None
        try:
            return await self.extras.attempt(
                "semantic cache", self.semantic.lookup(task, tier, threshold), None)
        except EmbedderError as exc:  # no embedding, no semantic hit: the task still runs
            log.warning("semantic lookup of %s skipped: %s", task.id, exc)
            return None

    async def act(self, plan: Plan) -> None:
        """Carry out a Plan, step by step; a failed publish stops it (the task is redelivered)."""
        for action in plan:
            match action:
                case Reject(reason):
                    raise RejectMessage(reason)
                case Answer(result, tier, cache, reply_to):
                    await publish_result(self.bus, result, reply_to)
                    ROUTED.labels(tier=tier, cache=cache).inc()
                case Route(tier, task, headers):
                    await self.send_to_workers(tier, task, headers)
                    ROUTED.labels(tier=tier, cache="miss").inc()
                case Defer(tier, task, headers):
                    await self.bus.publish(self.bus.names.batch, tier, task,
                                           priority=task.priority, message_id=task.id,
                                           headers=dict(headers))
                    ROUTED.labels(tier=tier, cache="miss").inc()
                case Emit(type_, tenant, task_id, data):
                    await emit(self.bus, type_, SERVICE, tenant=tenant, task_id=task_id, **data)

    async def send_to_workers(self, tier: str, task: Task, headers: Mapping[str, Any]) -> None:
        headers = dict(headers)
        if self.lanes is not None:
            await self.lanes.publish(self.bus, tier, task.tenant, task,
                                     priority=task.priority, message_id=task.id, headers=headers)
        else:
            await self.bus.publish(self.bus.names.work, tier, task,
                                   priority=task.priority, message_id=task.id, headers=headers)


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
                                 SemanticIndex(embedder.dimensions),
                                 make_pair_checker(config.cache, embedder))
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
