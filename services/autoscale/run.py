"""`agentq autoscale`: run between --min and --max `agentq worker` processes on queue depth.

Every --interval seconds: sample the work queues (each tier's own queue and every tenant lane
registered in Redis; ready + unacknowledged) and their growth, ask the policy for a worker
count, hold it through the cool-down, then start workers or drain them (SIGTERM, wait for the
exit), publishing `scale.up` / `scale.down` events.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass, replace
from typing import Any

from aio_pika.abc import AbstractIncomingMessage
from prometheus_client import Gauge
from pydantic import ValidationError

from services.autoscale.depth import DepthProbe
from services.autoscale.policy import Cooldown, apply_cooldown, suggest_workers
from services.autoscale.pool import WorkerPool
from services.autoscale.telemetry import WorkerReports
from services.common.amqp import Bus
from services.common.clients import Clients, open_clients
from services.common.config import AgentqConfig
from services.common.models import TIERS, Event
from services.common.publishing import emit
from services.common.queue_depth import WorkQueues, management_url
from services.common.settings import METRICS_PORTS, WORKER_METRICS_BASE, Settings
from services.common.topology import declare_topology

log = logging.getLogger(__name__)
SERVICE = "autoscale"
WORKERS = Gauge("agentq_autoscale_workers", "worker processes", ["state"])
TARGET = Gauge("agentq_autoscale_target", "workers the policy asks for")
DEPTH = Gauge("agentq_autoscale_depth", "messages in the scaled queues", ["kind"])


@dataclass(frozen=True)
class Options:
    """The autoscaler's flags."""

    min_workers: int
    max_workers: int
    tiers: list[str]
    concurrency: int
    grace_s: float
    interval_s: float
    up_cooldown_s: float
    down_cooldown_s: float
    drain_s: float
    task_s: float
    tokens_per_task: int
    management: str | None


def limiter_capacity(config: AgentqConfig, tiers: list[str]) -> tuple[int, int]:
    """Return the RPM and TPM the providers behind `tiers` allow together (0 = unlimited)."""
    providers = {config.primary(t).provider for t in tiers}
    limits = [config.providers[p] for p in providers]
    rpm = 0 if any(p.rpm == 0 for p in limits) else sum(p.rpm for p in limits)
    tpm = 0 if any(p.tpm == 0 for p in limits) else sum(p.tpm for p in limits)
    return rpm, tpm


async def watch_workers(bus: Bus, reports: WorkerReports) -> None:
    """Feed worker heartbeats and completions from `<ns>.events` into `reports`."""
    channel = await bus.connection.channel()
    queue = await channel.declare_queue(exclusive=True, auto_delete=True,
                                        arguments={"x-max-length": 10_000})
    for key in ("worker.heartbeat", "task.completed"):
        await queue.bind(bus.names.events, routing_key=key)

    async def on_event(message: AbstractIncomingMessage) -> None:
        with contextlib.suppress(ValidationError):
            reports.observe(Event.model_validate_json(message.body), time.monotonic())

    await bus.consume(queue.name, on_event, prefetch=200)


class Autoscaler:
    """One decision per tick: sample, decide, act, tell."""

    def __init__(self, options: Options, bus: Bus, probe: DepthProbe, pool: WorkerPool,
                 reports: WorkerReports, capacity: tuple[int, int]) -> None:
        self.options = options
        self.bus = bus
        self.probe = probe
        self.pool = pool
        self.reports = reports
        self.capacity = capacity  # (RPM, TPM) of the pools behind the tiers
        self.cooldown = Cooldown()

    async def tick(self) -> None:
        o = self.options
        self.pool.reap()
        depth = await self.probe.sample(self.reports.in_flight(time.monotonic()))
        growth = self.probe.growth_per_min()
        current = self.pool.size
        decision = suggest_workers(
            ready=depth.ready, unacked=depth.unacked, growth_per_min=growth, current=current,
            min_workers=o.min_workers, max_workers=o.max_workers,
            per_worker_rate=o.concurrency / max(self.reports.task_s, 1e-3),
            limiter_rpm=self.capacity[0], limiter_tpm=self.capacity[1],
            tokens_per_task=o.tokens_per_task, concurrency=o.concurrency, drain_s=o.drain_s)
        if current < o.min_workers:  # a worker died: replace it without waiting
            self.cooldown = Cooldown()
        decision, self.cooldown = apply_cooldown(decision, current, self.cooldown,
                                                 time.monotonic(), o.up_cooldown_s,
                                                 o.down_cooldown_s)
        log.debug("depth %s growth %+.0f/min workers %d: %s", depth, growth, current,
                  decision.reason)
        TARGET.set(decision.target)
        DEPTH.labels("ready").set(depth.ready)
        DEPTH.labels("unacked").set(depth.unacked)
        if decision.target != current:
            direction = "up" if decision.target > current else "down"
            log.info("scale %s %d -> %d: %s", direction, current, decision.target,
                     decision.reason)
            await self.pool.scale_to(decision.target)
            data: dict[str, Any] = {"from": current, "to": decision.target,
                                    "reason": decision.reason, "ready": depth.ready,
                                    "unacked": depth.unacked, "depth_source": depth.source}
            await emit(self.bus, "scale.up" if direction == "up" else "scale.down", SERVICE,
                       **data)
        WORKERS.labels("running").set(self.pool.size)
        WORKERS.labels("draining").set(self.pool.draining)


async def serve(settings: Settings, stop: asyncio.Event, options: Options) -> None:
    """Scale workers until `stop`, then drain them all."""
    async with open_clients(settings, SERVICE) as clients:
        await _scale(clients, stop, options)


async def _scale(clients: Clients, stop: asyncio.Event, options: Options) -> None:
    """Tick until `stop`; the worker pool drains before the clients close."""
    settings, names = clients.settings, clients.names
    config = settings.tier_table()
    bus = await clients.bus()
    prefetch = settings.worker_prefetch or options.concurrency
    # A registry outage must not hold up a tick: the one Redis timeout policy bounds it, and
    # WorkQueues then keeps the lanes it listed last.
    redis = clients.redis()
    probe = DepthProbe(bus.connection, settings.amqp_url,
                       WorkQueues(redis, names, options.tiers).flat, prefetch,
                       options.management)
    args = ["worker", "--concurrency", str(options.concurrency), "--grace", str(options.grace_s)]
    if options.tiers != list(TIERS):
        args += ["--tiers", ",".join(options.tiers)]
    pool = WorkerPool(args, {**os.environ, "PYTHONUNBUFFERED": "1"}, options.grace_s,
                      metrics_port_base=0 if settings.metrics_port < 0 else WORKER_METRICS_BASE)
    reports = WorkerReports(default_task_s=options.task_s)
    try:
        await declare_topology(await bus.connection.channel(), names)
        await watch_workers(bus, reports)
        scaler = Autoscaler(options, bus, probe, pool, reports,
                            limiter_capacity(config, options.tiers))
        log.info("autoscaling %s between %d and %d workers", options.tiers,
                 options.min_workers, options.max_workers)
        while not stop.is_set():
            try:
                await scaler.tick()
            except Exception:  # a broker hiccup must not leave the workers unmanaged
                log.exception("autoscale tick failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), options.interval_s)
    finally:
        log.info("stopping: draining %d workers", pool.size)
        await pool.close()


def parse(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="agentq autoscale", description=__doc__)
    parser.add_argument("--min", type=int, default=1, help="fewest workers (default 1)")
    parser.add_argument("--max", type=int, default=8, help="most workers (default 8)")
    parser.add_argument("--tiers", default="", help="comma-separated tiers (default: all)")
    parser.add_argument("--concurrency", type=int, default=32, help="tasks per worker")
    parser.add_argument("--grace", type=float, default=30.0,
                        help="seconds a drained worker may finish its tasks")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--cooldown", type=float, default=60.0,
                        help="seconds after a change before scaling down")
    parser.add_argument("--up-cooldown", type=float, default=None,
                        help="seconds after a change before scaling up (default: --interval)")
    parser.add_argument("--drain-seconds", type=float, default=60.0,
                        help="how soon a backlog should be cleared")
    parser.add_argument("--task-seconds", type=float, default=1.0,
                        help="task time assumed until workers report their own")
    parser.add_argument("--tokens-per-task", type=int, default=0,
                        help="tokens per task for the TPM capacity (0: judge by RPM only)")
    parser.add_argument("--management-url", default=None,
                        help="RabbitMQ management API (default: the broker's host, port "
                             "15672); 'none' to estimate unacked messages")
    args = parser.parse_args(argv)
    if not 0 <= args.min <= args.max or args.max < 1:
        parser.error("need 0 <= --min <= --max and --max >= 1")
    tiers = [t for t in args.tiers.split(",") if t] or list(TIERS)
    unknown = set(tiers) - set(TIERS)
    if unknown:
        parser.error(f"unknown tiers {sorted(unknown)}")
    return Options(
        min_workers=args.min, max_workers=args.max, tiers=tiers,
        concurrency=args.concurrency, grace_s=args.grace, interval_s=args.interval,
        up_cooldown_s=args.interval if args.up_cooldown is None else args.up_cooldown,
        down_cooldown_s=args.cooldown, drain_s=args.drain_seconds, task_s=args.task_seconds,
        tokens_per_task=args.tokens_per_task, management=args.management_url)


def main(argv: list[str] | None = None) -> int:
    from services.common.runtime import run

    options = parse(argv)
    try:
        settings = Settings()
    except ValueError as exc:
        print(f"agentq autoscale: bad setting: {exc}", file=sys.stderr)
        return 2
    if options.management is None:
        options = replace(options, management=management_url(settings.amqp_url))
    elif options.management == "none":
        options = replace(options, management=None)

    async def service(s: Settings, stop: asyncio.Event) -> None:
        await serve(s, stop, options)

    return run(service, settings, SERVICE, METRICS_PORTS[SERVICE])


if __name__ == "__main__":
    raise SystemExit(main())
