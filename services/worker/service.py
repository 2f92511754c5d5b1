"""The worker: take tasks of its tiers, call the provider under the shared limiter, publish."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import random
import socket
import time

from redis.asyncio import Redis

from services.common.amqp import Broker, Bus, IncomingMessage, RejectMessage
from services.common.cache import ExactCache
from services.common.clients import open_clients
from services.common.config import AgentqConfig
from services.common.config_check import check_providers
from services.common.embedder import make_embedder
from services.common.models import TIERS, Latency, Task
from services.common.publishing import emit
from services.common.semantic_cache import SemanticCache
from services.common.settings import Settings
from services.common.topology import Names, declare_topology
from services.lanes.directory import LaneDirectory
from services.lanes.registry import LaneRegistry
from services.lanes.roster import RosterSweep
from services.lanes.state import LaneState
from services.lanes.sweeper import BrokerQueues, LaneSweeper
from services.lanes.watcher import WATCH_INTERVAL_S as LANE_WATCH_S
from services.lanes.watcher import LaneWatcher, repeat
from services.worker.act import Executor
from services.worker.actions import Call, Plan, Reject, WorkOrder
from services.worker.calls import ProviderCalls
from services.worker.cascade import check_answer
from services.worker.controls import CostControls
from services.worker.decide import (
    Answer,
    CallFailure,
    RetryPolicy,
    answer_plan,
    answer_result,
    budget_plan,
    call_latency,
    dedups,
    failure_plan,
    rate_wait_since,
    read_order,
    release,
    twin_plan,
)
from services.worker.limiter import (
    SharedLimiter,
    pools_from_config,
    retry_after_from_headers,
    tenants_from_config,
)
from services.worker.limiter.learned import LearnedLimits
from services.worker.limiter.learning import Lowered
from services.worker.limiter_report import LimiterReport
from services.worker.provider import ProviderError, ProviderRateLimited, Providers
from services.worker.throttle import CallClock, Throttle

log = logging.getLogger(__name__)
SERVICE = "worker"
HEARTBEAT_S = 5.0
LEARNED_POLL_S = 1.0  # how soon a limit one worker learned is in force in the others


class Worker:
    """Handle one work message: receive it, decide, act (the provider call in the middle)."""

    def __init__(self, broker: Broker, providers: Providers, config: AgentqConfig,
                 settings: Settings, controls: CostControls, throttle: Throttle,
                 concurrency: int, lanes: LaneDirectory) -> None:
        self.config = config
        self.settings = settings
        self.controls = controls
        self.calls = ProviderCalls(broker, providers, controls, throttle, concurrency)
        self.act = Executor(broker, lanes, controls)
        self.retry_policy = RetryPolicy(settings.max_attempts, settings.retry_base_ms,
                                        settings.retry_max_ms)
        self.rng = random.Random()

    @property
    def busy(self) -> int:
        return self.calls.busy

    @property
    def concurrency(self) -> int:
        return self.calls.concurrency

    @property
    def throttle(self) -> Throttle:
        return self.calls.throttle

    async def handle(self, message: IncomingMessage) -> None:
        """Receive a work message, decide, act; returning means the effects are confirmed."""
        order = read_order(message.body, str(message.routing_key or ""), message.headers)
        if isinstance(order, Reject):
            raise RejectMessage(order.reason)
        if await self.act.carry_out(await self.clearance(order)):
            await self.act.carry_out(await self.attempt(order))

    async def clearance(self, order: WorkOrder) -> Plan:
        """Decide whether to call the provider: the tenant's budget, then a twin's answer."""
        tenant = order.task.tenant
        plan = budget_plan(order, self.config.tenant(tenant).budget,
                           await self.controls.budget_level(tenant), time.time())
        if not isinstance(plan[-1], Call) or not dedups(order):
            return plan
        return twin_plan(order, await self.controls.twin_answer(order), self.config,
                         time.time())

    async def attempt(self, order: WorkOrder) -> Plan:
        """Call the provider once (waits for capacity included); decide what its answer or
        its failure leads to."""
        task, tier = order.task, order.tier
        started = time.time()
        clock = CallClock(self.settings.rate_limit_wait_s, rate_wait_since(order.headers))
        try:
            completion = await self.calls.call(task, tier, order.attempt, clock)
        except asyncio.CancelledError:  # shutting down: the message goes back to its queue
            await self.act.carry_out(release(order))
            raise
        except ProviderError as exc:
            return failure_plan(order, failure_of(exc, clock), self.retry_policy, self.rng,
                                _latency(task, started, clock),
                                self.config.primary(tier).model)
        result = answer_result(order, Answer(completion.text, completion.model,
                                             completion.usage, completion.entry),
                               self.config, _latency(task, started, clock))
        # A client's validator is CPU work of the client's choosing: off the event loop.
        failed_check = None if task.validator is None else \
            await asyncio.to_thread(check_answer, task.validator, result.output)
        return answer_plan(order, result, failed_check, self.config)

    def give_back_waiting(self) -> None:
        """Send every task still waiting for the limiter back to its queue (at shutdown)."""
        self.calls.give_back_waiting()


def failure_of(exc: ProviderError, clock: CallClock) -> CallFailure:
    """Translate a provider error into what deciding the next step needs of it."""
    return CallFailure(code=exc.code, message=str(exc), retryable=exc.retryable,
                       rate_limited=isinstance(exc, ProviderRateLimited),
                       retry_after_s=retry_after_from_headers(exc.headers),
                       rate_wait_since=clock.since)


def _latency(task: Task, started: float, clock: CallClock | None) -> Latency:
    """Split a delivery's time: queued before it, waiting for capacity, in provider calls."""
    now = time.time()
    if clock is None:
        return call_latency(task, started, now, now - started, None)
    return call_latency(task, started, now, clock.llm_s, clock.limiter_s)


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
    # A missing key, a dead base URL or an unknown model is said once, naming the provider,
    # instead of as the first task's failure; the worker still starts (the provider may come).
    for problem in await asyncio.to_thread(check_providers, config):
        log.warning("%s", problem)
    async with open_clients(settings, SERVICE) as clients:
        bus = await clients.bus()
        redis = clients.redis()
        providers = Providers(config, settings.llm_timeout_s)
        clients.closing(providers.close)
        embedder = make_embedder(config)
        clients.closing(embedder.close)
        worker_id = f"{socket.gethostname()}:{os.getpid()}"
        # The limiter's own client, apart from the caches' so its calls never queue behind
        # theirs, and with shorter timeouts: an outage switches it to local buckets at once.
        limiter_redis = Redis.from_url(settings.redis_url, socket_timeout=1,
                                       socket_connect_timeout=1)
        clients.closing(limiter_redis.aclose)
        pools = pools_from_config(config)
        limiter = SharedLimiter(limiter_redis, names, pools, tenants_from_config(config),
                                worker_id=worker_id)
        clients.closing(limiter.close)

        async def lowered(pool: str, change: Lowered) -> None:
            await emit(bus, "limiter.lowered", SERVICE, worker_id=worker_id, pool=pool,
                       limit=change.limit, configured=change.configured,
                       advertised=change.advertised)

        learned = LearnedLimits(limiter_redis, names, limiter, pools, config.providers,
                                on_lowered=lowered)
        await limiter.start()
        await declare_topology(await bus.connection.channel(), names)
        exact = ExactCache(redis, names, config.cache.exact_ttl_s or settings.cache_ttl_s)
        semantic = SemanticCache(redis, names, embedder, config.cache.semantic_ttl_s)
        lanes_channel = await bus.connection.channel()
        registry = LaneRegistry(redis, names, settings.lane_idle_s, settings.lane_retire_s)
        # One record of this process's lanes: those it publishes to and those it consumes.
        lanes = LaneState(bus)
        worker = Worker(bus, providers, config, settings,
                        CostControls(names, config, redis, exact, semantic),
                        Throttle(limiter, {name: provider.tpm_counts for name, provider
                                           in config.providers.items()}, learned),
                        concurrency, LaneDirectory(lanes_channel, registry, lanes))
        # Full collections skip what start-up built (SDK clients, config, the embedder):
        # their pauses land on the limiter's awaits as latency.
        gc.freeze()
        for tier in tiers:
            await bus.consume(names.work_queue(tier), worker.handle, prefetch=prefetch)

        log.info("worker %s consuming %s and their lanes, prefetch %d each", worker_id, tiers,
                 prefetch)
        watcher = LaneWatcher(registry, tiers, lanes, lanes_channel, worker.handle, prefetch)
        sweeper = LaneSweeper(registry, tiers, BrokerQueues(bus.connection), worker_id,
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
