"""The worker: take tasks of its tiers, call the provider under the shared limiter, publish."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
from typing import Any

from aio_pika.abc import AbstractIncomingMessage
from pydantic import ValidationError
from redis.asyncio import Redis

from services.common.amqp import Bus, RejectMessage
from services.common.cache import CachedAnswer, ExactCache, cacheable
from services.common.config import AgentqConfig, load_config
from services.common.models import TIERS, ErrorInfo, Latency, Result, Task
from services.common.pricing import call_cost, saved
from services.common.publishing import emit, publish_result
from services.common.settings import Settings
from services.common.topology import (
    ATTEMPT_HEADER,
    DELAY_HEADER,
    ERROR_HEADER,
    ROUTE_HEADER,
    Names,
    declare_topology,
    retry_level,
)
from services.worker.provider import Completion, ProviderError, Providers
from services.worker.retry import retry_delay_ms, should_retry

log = logging.getLogger(__name__)
SERVICE = "worker"
HEARTBEAT_S = 5.0


class Worker:
    """Handle one work message from start to a confirmed Result."""

    def __init__(self, bus: Bus, providers: Providers, cache: ExactCache, config: AgentqConfig,
                 settings: Settings) -> None:
        self.bus = bus
        self.providers = providers
        self.cache = cache
        self.config = config
        self.settings = settings
        self.rng = random.Random()

    async def handle(self, message: AbstractIncomingMessage) -> None:
        try:
            task = Task.model_validate_json(message.body)
        except ValidationError as exc:
            raise RejectMessage(f"not a Task: {exc.errors()[0]['msg']}") from None
        headers: dict[str, Any] = dict(message.headers or {})
        tier = str(message.routing_key or "")
        if tier not in TIERS:
            raise RejectMessage(f"unknown tier {tier!r}")
        attempt = int(headers.get(ATTEMPT_HEADER) or 1)
        started = time.time()
        try:
            completion = await self.call(task, tier)
        except ProviderError as exc:
            await self.on_failure(task, tier, attempt, headers, exc, started)
            return
        result = self.success_result(task, tier, attempt, headers, completion, started)
        if cacheable(task):
            await self.cache.put(task, tier, CachedAnswer(
                output=result.output, model=result.model, tier=tier, usage=result.usage))
        await publish_result(self.bus, result, task.reply_to)
        await emit(self.bus, "task.completed", SERVICE, tenant=task.tenant, task_id=task.id,
                   tier=tier, model=result.model, cost_usd=result.cost_usd,
                   attempts=attempt, llm_ms=result.latency_ms.llm)

    async def call(self, task: Task, tier: str) -> Completion:
        """Call the tier's model (the shared limiter hooks in here)."""
        return await self.providers.complete(self.config.primary(tier), task)

    def success_result(self, task: Task, tier: str, attempt: int, headers: dict[str, Any],
                       completion: Completion, started: float) -> Result:
        now = time.time()
        submitted = task.submitted_at or started
        cost = call_cost(self.config.primary(tier), completion.usage)
        return Result(
            task_id=task.id, tenant=task.tenant, status="succeeded", output=completion.text,
            model=completion.model, tier=tier, usage=completion.usage, cost_usd=cost,
            cost_saved_usd=saved(self.config, completion.usage, cost), cache="miss",
            attempts=attempt, latency_ms=Latency(
                queue=max(0.0, (started - submitted) * 1000), llm=(now - started) * 1000,
                total=max(0.0, (now - submitted) * 1000)),
            metadata=task.metadata, kind=task.kind,
            route_reason=str(headers.get(ROUTE_HEADER, "")))

    async def on_failure(self, task: Task, tier: str, attempt: int, headers: dict[str, Any],
                         exc: ProviderError, started: float) -> None:
        """Schedule a retry through the delay queues, or fail and dead-letter the task."""
        s = self.settings
        if should_retry(exc.retryable, attempt, s.max_attempts):
            delay_ms = retry_delay_ms(attempt, s.retry_base_ms, s.retry_max_ms, self.rng,
                                      _retry_after_s(exc.headers))
            level = retry_level(delay_ms)
            await self.bus.publish(
                self.bus.names.retry, tier, task, priority=task.priority, message_id=task.id,
                headers={**headers, ATTEMPT_HEADER: attempt + 1, DELAY_HEADER: level},
                expiration=min(delay_ms, level) / 1000)
            await emit(self.bus, "task.retry", SERVICE, tenant=task.tenant, task_id=task.id,
                       tier=tier, attempt=attempt, delay_ms=round(delay_ms),
                       error_code=exc.code)
            return
        now = time.time()
        submitted = task.submitted_at or started
        result = Result(
            task_id=task.id, tenant=task.tenant, status="failed", tier=tier,
            model=self.config.primary(tier).model, attempts=attempt,
            error=ErrorInfo(code=exc.code, message=str(exc)[:2000]),
            latency_ms=Latency(queue=max(0.0, (started - submitted) * 1000),
                               llm=(now - started) * 1000,
                               total=max(0.0, (now - submitted) * 1000)),
            metadata=task.metadata, kind=task.kind,
            route_reason=str(headers.get(ROUTE_HEADER, "")))
        await publish_result(self.bus, result, task.reply_to)
        await self.bus.publish(self.bus.names.dlx, f"{tier}.{exc.code}", task,
                               message_id=task.id,
                               headers={**headers, ERROR_HEADER: f"{exc.code}: {exc}"[:4000]})
        await emit(self.bus, "task.dead", SERVICE, tenant=task.tenant, task_id=task.id,
                   tier=tier, attempts=attempt, error_code=exc.code)


def _retry_after_s(headers: Any) -> float | None:
    value = headers.get("retry-after") if headers else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


async def _heartbeat(bus: Bus, worker_id: str, tiers: list[str], concurrency: int,
                     stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await emit(bus, "worker.heartbeat", SERVICE, worker_id=worker_id, tiers=tiers,
                       in_flight=bus.in_flight, concurrency=concurrency, pid=os.getpid())
        except Exception:  # telemetry must never stop the worker
            log.debug("heartbeat failed", exc_info=True)
        try:
            await asyncio.wait_for(stop.wait(), HEARTBEAT_S)
        except TimeoutError:
            pass


async def serve(settings: Settings, stop: asyncio.Event, tiers: list[str] | None = None,
                concurrency: int | None = None, grace_s: float = 30.0) -> None:
    """Run a worker process on `tiers` until `stop` is set, then drain gracefully."""
    names = Names(settings.namespace)
    tiers = tiers or list(TIERS)
    concurrency = concurrency or settings.worker_concurrency
    prefetch = settings.worker_prefetch or concurrency
    config = load_config(settings.config_path(), settings.openai_api_key,
                         settings.openai_base_url)
    bus = await Bus.connect(settings.amqp_url, names, name=SERVICE)
    redis = Redis.from_url(settings.redis_url)
    providers = Providers(config, settings.llm_timeout_s)
    worker_id = f"{socket.gethostname()}:{os.getpid()}"
    try:
        await declare_topology(await bus.connection.channel(), names)
        worker = Worker(bus, providers, ExactCache(redis, names, settings.cache_ttl_s),
                        config, settings)
        for tier in tiers:
            await bus.consume(names.work_queue(tier), worker.handle, prefetch=prefetch)
        log.info("worker %s consuming %s with prefetch %d", worker_id, tiers, prefetch)
        heartbeat = asyncio.create_task(_heartbeat(bus, worker_id, tiers, concurrency, stop))
        await stop.wait()
        log.info("worker %s draining %d in flight", worker_id, bus.in_flight)
        await bus.stop_consuming(grace_s=grace_s)
        await heartbeat
    finally:
        await bus.close()
        await redis.aclose()
        await providers.close()
