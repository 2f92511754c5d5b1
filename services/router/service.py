"""The router: decide each task's tier, answer from the cache, or queue it for a worker."""

from __future__ import annotations

import asyncio
import logging
import time

from aio_pika.abc import AbstractIncomingMessage
from pydantic import ValidationError
from redis.asyncio import Redis

from services.common.amqp import Bus, RejectMessage
from services.common.cache import CachedAnswer, ExactCache, cacheable
from services.common.config import AgentqConfig, load_config
from services.common.models import Latency, Result, Task
from services.common.pricing import saved
from services.common.publishing import emit, publish_result
from services.common.settings import Settings
from services.common.tokens import count_messages
from services.common.topology import ATTEMPT_HEADER, ROUTE_HEADER, Names, declare_topology
from services.router.policy import RouteDecision, choose_tier

log = logging.getLogger(__name__)
SERVICE = "router"


def cache_hit_result(task: Task, decision: RouteDecision, hit: CachedAnswer,
                     config: AgentqConfig, now: float) -> Result:
    """Build the Result of a task answered from the cache."""
    waited_ms = max(0.0, (now - (task.submitted_at or now)) * 1000)
    return Result(
        task_id=task.id, tenant=task.tenant, status="succeeded", output=hit.output,
        model=hit.model, tier=hit.tier, usage=hit.usage, cost_usd=0.0,
        cost_saved_usd=saved(config, hit.usage, 0.0), cache="exact", attempts=0,
        latency_ms=Latency(queue=waited_ms, llm=0.0, total=waited_ms), metadata=task.metadata,
        kind=task.kind, route_reason=decision.reason)


class Router:
    """Consume accepted tasks and send each on its way."""

    def __init__(self, bus: Bus, cache: ExactCache, config: AgentqConfig) -> None:
        self.bus = bus
        self.cache = cache
        self.config = config

    async def handle(self, message: AbstractIncomingMessage) -> None:
        try:
            task = Task.model_validate_json(message.body)
        except ValidationError as exc:
            raise RejectMessage(f"not a Task: {exc.errors()[0]['msg']}") from None
        decision = choose_tier(task, self.config, count_messages(
            m.model_dump() for m in task.messages))
        if cacheable(task):
            hit = await self.cache.get(task, decision.tier)
            if hit is not None:
                result = cache_hit_result(task, decision, hit, self.config, time.time())
                await publish_result(self.bus, result, task.reply_to)
                await emit(self.bus, "task.routed", SERVICE, tenant=task.tenant,
                           task_id=task.id, tier=decision.tier, reason=decision.reason,
                           kind=task.kind, cache="exact")
                return
        await self.bus.publish(self.bus.names.work, decision.tier, task,
                               priority=task.priority, message_id=task.id,
                               headers={ROUTE_HEADER: decision.reason, ATTEMPT_HEADER: 1})
        await emit(self.bus, "task.routed", SERVICE, tenant=task.tenant, task_id=task.id,
                   tier=decision.tier, reason=decision.reason, kind=task.kind, cache="miss")


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Run the router until `stop` is set."""
    names = Names(settings.namespace)
    config = load_config(settings.config_path(), settings.openai_api_key,
                         settings.openai_base_url)
    bus = await Bus.connect(settings.amqp_url, names, name=SERVICE)
    redis = Redis.from_url(settings.redis_url)
    try:
        await declare_topology(await bus.connection.channel(), names)
        router = Router(bus, ExactCache(redis, names, settings.cache_ttl_s), config)
        await bus.consume(names.tasks, router.handle, prefetch=200)
        log.info("router consuming %s", names.tasks)
        await stop.wait()
        await bus.stop_consuming(grace_s=10)
    finally:
        await bus.close()
        await redis.aclose()
