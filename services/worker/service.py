"""The worker: take tasks of its tiers, call the provider under the shared limiter, publish."""

from __future__ import annotations

import asyncio
import gc
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
from services.common.cache import ExactCache
from services.common.config import AgentqConfig
from services.common.embedder import make_embedder
from services.common.lane_roster import RosterSweep
from services.common.lanes import LaneDirectory, LaneRegistry
from services.common.models import TIERS, ErrorInfo, Latency, Result, Task
from services.common.pricing import call_cost, saved
from services.common.publishing import emit, publish_result
from services.common.queue_depth import read_passive
from services.common.redis_extras import extras_client
from services.common.semantic_cache import SemanticCache
from services.common.settings import Settings
from services.common.topology import (
    ATTEMPT_HEADER,
    ERROR_HEADER,
    ROUTE_HEADER,
    STARTED_EVENT,
    Names,
    declare_lane,
    declare_topology,
    tier_of,
)
from services.common.work_headers import RATE_WAIT_HEADER
from services.worker.controls import CostControls
from services.worker.lanes import WATCH_INTERVAL_S as LANE_WATCH_S
from services.worker.lanes import LaneSweeper, LaneWatcher, repeat
from services.worker.limiter import (
    SharedLimiter,
    pools_from_config,
    retry_after_from_headers,
    tenants_from_config,
)
from services.worker.limiter.learned import LearnedLimits
from services.worker.limiter.learning import Lowered
from services.worker.limiter_report import LimiterReport
from services.worker.provider import Completion, ProviderError, ProviderRateLimited, Providers
from services.worker.retry import next_attempt, retry_delay_ms
from services.worker.throttle import CallClock, Throttle

log = logging.getLogger(__name__)
SERVICE = "worker"
HEARTBEAT_S = 5.0
LEARNED_POLL_S = 1.0  # how soon a limit one worker learned is in force in the others


class Worker:
    """Handle one work message from start to a confirmed Result."""

    def __init__(self, bus: Bus, providers: Providers, config: AgentqConfig, settings: Settings,
                 controls: CostControls, throttle: Throttle, concurrency: int) -> None:
        self.bus = bus
        self.providers = providers
        self.config = config
        self.settings = settings
        self.controls = controls
        self.throttle = throttle
        self.concurrency = concurrency
        # Each lane may hand over up to its prefetch; this caps the provider calls under way
        # in the whole process at `concurrency`, whatever the lanes and tiers.
        self.slots = asyncio.Semaphore(concurrency)
        self.rng = random.Random()
        self._announcements: set[asyncio.Task[None]] = set()
        self._waiting: set[asyncio.Task[Any]] = set()  # handlers not yet granted a call

    @property
    def busy(self) -> int:
        return self.concurrency - self.slots._value

    async def handle(self, message: AbstractIncomingMessage) -> None:
        try:
            task = Task.model_validate_json(message.body)
        except ValidationError as exc:
            raise RejectMessage(f"not a Task: {exc.errors()[0]['msg']}") from None
        headers: dict[str, Any] = dict(message.headers or {})
        tier = tier_of(str(message.routing_key or ""))  # from a lane or the tier's own queue
        if tier not in TIERS:
            raise RejectMessage(f"unknown tier {tier!r}")
        attempt = int(headers.get(ATTEMPT_HEADER) or 1)
        if not await self.controls.admit(task, tier, headers):  # held, refused, deduped
            return
        started = time.time()
        clock = CallClock(self.settings.rate_limit_wait_s, _since(headers))
        try:
            completion = await self.call(task, tier, attempt, clock)
        except asyncio.CancelledError:  # shutting down: the message goes back to its queue
            await self.controls.abandon(task, tier, headers)
            raise
        except ProviderError as exc:
            if clock.since is not None:
                headers[RATE_WAIT_HEADER] = clock.since
            await self.on_failure(task, tier, attempt, headers, exc, started, clock)
            return
        result = await self.controls.conclude(
            task, tier, headers, self.success_result(task, tier, attempt, headers, completion,
                                                     started, clock))
        if result is None:  # the answer failed its validator: escalated to the next tier
            return
        await publish_result(self.bus, result, task.reply_to)
        await emit(self.bus, "task.completed", SERVICE, tenant=task.tenant, task_id=task.id,
                   tier=tier, model=result.model, cost_usd=result.cost_usd,
                   attempts=attempt, llm_ms=result.latency_ms.llm,
                   limiter_ms=result.latency_ms.limiter, reason=result.route_reason,
                   status=result.status)

    def announce(self, task: Task, tier: str, attempt: int) -> None:
        """Say the task is running, without holding the task up for the broker's confirm."""
        publish = asyncio.create_task(emit(self.bus, STARTED_EVENT, SERVICE, tenant=task.tenant,
                                           task_id=task.id, tier=tier, attempt=attempt))
        self._announcements.add(publish)
        publish.add_done_callback(self._announced)

    def _announced(self, publish: asyncio.Task[None]) -> None:
        self._announcements.discard(publish)
        if not publish.cancelled() and publish.exception() is not None:
            log.debug("task.started not published: %r", publish.exception())

    async def call(self, task: Task, tier: str, attempt: int = 1,
                   clock: CallClock | None = None) -> Completion:
        """Call the tier's model within the pools' shared limits and the process's slots;
        `clock` bounds the waits for capacity and records them."""
        entry = self.controls.pick(tier)  # the first model whose circuit breaker is closed
        handler = asyncio.current_task()
        assert handler is not None

        async def send() -> Completion:
            self._waiting.discard(handler)
            # A slot is taken once the limiter granted the call: a task waiting for its
            # tenant's fair share must not keep another tenant's granted call from running.
            async with self.slots:
                self.announce(task, tier, attempt)
                return await self.providers.complete(entry, task)

        self._waiting.add(handler)
        try:
            completion = await self.throttle.call(entry, task, send, clock)
        except ProviderError as exc:
            self.controls.settle(entry, exc)
            raise
        finally:
            self._waiting.discard(handler)
        self.controls.settle(entry, None)
        return completion

    def give_back_waiting(self) -> None:
        """Send every task still waiting for the limiter back to its queue (at shutdown):
        none of it has started, and another worker can run it sooner than this one's grace."""
        for handler in list(self._waiting):
            handler.cancel()

    def success_result(self, task: Task, tier: str, attempt: int, headers: dict[str, Any],
                       completion: Completion, started: float,
                       clock: CallClock | None = None) -> Result:
        cost = call_cost(completion.entry or self.config.primary(tier), completion.usage)
        return Result(
            task_id=task.id, tenant=task.tenant, status="succeeded", output=completion.text,
            model=completion.model, tier=tier, usage=completion.usage, cost_usd=cost,
            cost_saved_usd=saved(self.config, completion.usage, cost), cache="miss",
            attempts=attempt, latency_ms=_latency(task, started, clock),
            metadata=task.metadata, kind=task.kind,
            route_reason=str(headers.get(ROUTE_HEADER, "")))

    async def on_failure(self, task: Task, tier: str, attempt: int,
                         headers: dict[str, Any], exc: ProviderError, started: float,
                         clock: CallClock | None = None) -> None:
        """Schedule a retry through the delay queues, or fail and dead-letter the task.

        Only the task's own errors spend attempts: waits for capacity (429s, holds) are the
        throttle's; one that held the message long enough comes back here to wait in a
        delay queue instead, at the same attempt, until its budget is spent.
        """
        s = self.settings
        again = next_attempt(isinstance(exc, ProviderRateLimited), exc.retryable, attempt,
                             s.max_attempts)
        if again is not None:
            delay_ms = retry_delay_ms(attempt, s.retry_base_ms, s.retry_max_ms, self.rng,
                                      retry_after_from_headers(exc.headers))
            await self.controls.lanes.publish_later(
                self.bus, tier, task, {**headers, ATTEMPT_HEADER: again}, delay_ms)
            await emit(self.bus, "task.retry", SERVICE, tenant=task.tenant, task_id=task.id,
                       tier=tier, attempt=attempt, delay_ms=round(delay_ms),
                       error_code=exc.code)
            return
        result = Result(
            task_id=task.id, tenant=task.tenant, status="failed", tier=tier,
            model=self.config.primary(tier).model, attempts=attempt,
            error=ErrorInfo(code=exc.code, message=str(exc)[:2000]),
            latency_ms=_latency(task, started, clock),
            metadata=task.metadata, kind=task.kind,
            route_reason=str(headers.get(ROUTE_HEADER, "")))
        await self.controls.abandon(task, tier, headers)
        await publish_result(self.bus, result, task.reply_to)
        await self.bus.publish(self.bus.names.dlx, f"{tier}.{exc.code}", task,
                               message_id=task.id,
                               headers={**headers, ERROR_HEADER: f"{exc.code}: {exc}"[:4000]})
        await emit(self.bus, "task.dead", SERVICE, tenant=task.tenant, task_id=task.id,
                   tier=tier, attempts=attempt, error_code=exc.code)


def _since(headers: dict[str, Any]) -> float | None:
    """Return when the task first waited for capacity, from its message header."""
    try:
        return float(headers[RATE_WAIT_HEADER])
    except (KeyError, TypeError, ValueError):
        return None


def _latency(task: Task, started: float, clock: CallClock | None) -> Latency:
    """Split a delivery's time: queued before it, waiting for capacity, in provider calls."""
    now = time.time()
    submitted = task.submitted_at or started
    queue = max(0.0, (started - submitted) * 1000)
    total = max(0.0, (now - submitted) * 1000)
    if clock is None:
        return Latency(queue=queue, llm=(now - started) * 1000, total=total)
    return Latency(queue=queue, llm=clock.llm_s * 1000, limiter=clock.limiter_s * 1000,
                   total=total)


async def _heartbeat(bus: Bus, worker: Worker, worker_id: str, tiers: list[str],
                     stop: asyncio.Event, learned: LearnedLimits) -> None:
    """Every few seconds, say this worker is alive and what its limiter did meanwhile."""
    limiter = worker.throttle.limiter
    report = LimiterReport(limiter.limits, learned.sources)
    while not stop.is_set():
        try:
            await emit(bus, "worker.heartbeat", SERVICE, worker_id=worker_id, tiers=tiers,
                       in_flight=worker.busy, concurrency=worker.concurrency,
                       pid=os.getpid())
            for data in report.events(limiter.stats(), time.monotonic()):
                await emit(bus, "limiter.stats", SERVICE, worker_id=worker_id, **data)
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
    config = settings.tier_table()
    bus = await Bus.connect(settings.amqp_url, names, name=SERVICE)
    redis = extras_client(settings.redis_url)
    providers = Providers(config, settings.llm_timeout_s)
    embedder = make_embedder(config)
    worker_id = f"{socket.gethostname()}:{os.getpid()}"
    # The limiter's own client: short timeouts, so an outage switches it to local buckets.
    limiter_redis = Redis.from_url(settings.redis_url, socket_timeout=1,
                                   socket_connect_timeout=1)
    pools = pools_from_config(config)
    limiter = SharedLimiter(limiter_redis, names, pools, tenants_from_config(config),
                            worker_id=worker_id)

    async def lowered(pool: str, change: Lowered) -> None:
        await emit(bus, "limiter.lowered", SERVICE, worker_id=worker_id, pool=pool,
                   limit=change.limit, configured=change.configured,
                   advertised=change.advertised)

    learned = LearnedLimits(limiter_redis, names, limiter, pools, config.providers,
                            on_lowered=lowered)
    try:
        await limiter.start()
        await declare_topology(await bus.connection.channel(), names)
        exact = ExactCache(redis, names, config.cache.exact_ttl_s or settings.cache_ttl_s)
        semantic = SemanticCache(redis, names, embedder, config.cache.semantic_ttl_s)
        lanes_channel = await bus.connection.channel()
        registry = LaneRegistry(redis, names, settings.lane_idle_s, settings.lane_retire_s)
        worker = Worker(bus, providers, config, settings,
                        CostControls(bus, config, redis, exact, semantic,
                                     LaneDirectory(lanes_channel, registry)),
                        Throttle(limiter, {name: provider.tpm_counts for name, provider
                                           in config.providers.items()}, learned),
                        concurrency)
        # Full collections skip what start-up built (SDK clients, config, the embedder):
        # their pauses land on the limiter's awaits as latency.
        gc.freeze()
        for tier in tiers:
            await bus.consume(names.work_queue(tier), worker.handle, prefetch=prefetch)

        async def consume_lane(tier: str, tenant: str) -> None:
            await declare_lane(lanes_channel, names, tier, tenant)
            await bus.consume(names.lane_queue(tier, tenant), worker.handle, prefetch=prefetch)
            log.info("worker %s consuming the lane of %s in %s", worker_id, tenant, tier)

        async def idle_lane(tier: str, tenant: str) -> None:
            await bus.stop_queue(names.lane_queue(tier, tenant))
            log.info("worker %s: the lane of %s in %s is idle; no longer consumed", worker_id,
                     tenant, tier)

        async def depths(queues: list[str]) -> dict[str, tuple[int, int]]:
            return {r.queue: (r.ready, r.consumers)
                    for r in await read_passive(bus.connection, queues)}

        async def delete(queue: str) -> None:
            channel = await bus.connection.channel()  # an error closes it, not a shared one
            try:
                await channel.queue_delete(queue)
            finally:
                await channel.close()

        log.info("worker %s consuming %s and their lanes, prefetch %d each", worker_id, tiers,
                 prefetch)
        watcher = LaneWatcher(registry, tiers, consume_lane, idle_lane,
                              lambda lane: bus.in_hand(names.lane_queue(*lane)))
        sweeper = LaneSweeper(registry, tiers, depths, delete, worker_id,
                              RosterSweep(bus.connection, names, tiers).stranded)
        watching = asyncio.gather(
            repeat(watcher.poll, LANE_WATCH_S, stop, "watching the lane registry"),
            repeat(sweeper.sweep, sweeper.every_s, stop, "sweeping idle lanes"),
            repeat(learned.poll, LEARNED_POLL_S, stop, "reading learned limits"))
        heartbeat = asyncio.create_task(_heartbeat(bus, worker, worker_id, tiers, stop,
                                                   learned))
        await stop.wait()
        await watching
        log.info("worker %s draining %d in flight", worker_id, bus.in_flight)
        await bus.stop_consuming(grace_s=grace_s, then=worker.give_back_waiting)
        log.info("worker %s drained", worker_id)
        await heartbeat
    finally:
        await limiter.close()
        await bus.close()
        await redis.aclose()
        await limiter_redis.aclose()
        await providers.close()
        await embedder.close()
