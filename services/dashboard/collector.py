"""The dashboard's collector: roll Results and Events up per minute, sample queue depths,
prune raw rows and evaluate the alerts, all in one process (`python -m ...collector`).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlparse

from aio_pika.abc import AbstractIncomingMessage
from aio_pika.exceptions import AMQPError
from prometheus_client import Counter, Histogram
from pydantic import BaseModel, ValidationError
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from services.common.amqp import Bus, RejectMessage
from services.common.batching import BatchCommitter
from services.common.clients import Clients, open_clients
from services.common.models import TIERS, Event, Result
from services.common.queue_depth import WorkQueues, management_url
from services.common.runtime import every as every_interval
from services.common.runtime import run, until_stopped
from services.common.settings import METRICS_PORTS, Settings
from services.common.store import make_engine
from services.common.topology import declare_topology
from services.dashboard.evaluator import Evaluator
from services.dashboard.models import create_tables
from services.dashboard.rollup import aggregate
from services.dashboard.sampler import QueueSampler
from services.dashboard.writer import apply_delta, prune, record_readings

log = logging.getLogger(__name__)
SERVICE = "dashboard-collector"
METRICS_PORT = METRICS_PORTS[SERVICE]
BATCH_SIZE = 500
SAMPLE_TIMEOUT_S = 10.0

MESSAGES = Counter("agentq_dashboard_messages_total", "Messages rolled up", ["source"])
FLUSH_SECONDS = Histogram("agentq_dashboard_flush_seconds", "Time to write one batch")
LOOP_FAILURES = Counter("agentq_dashboard_loop_failures_total", "Failed periodic jobs", ["job"])


@dataclass(frozen=True)
class Options:
    """How often the collector does each of its jobs."""

    prefetch: int = 500
    flush_interval_s: float = 0.25
    sample_interval_s: float = 5.0
    eval_interval_s: float = 5.0
    prune_interval_s: float = 600.0
    management_url: str | None = None  # None = the broker host's port 15672; "" = never
    connect_retry_s: float = 2.0  # while RabbitMQ does not answer (the alerts run meanwhile)


def open_engine(database_url: str) -> Engine:
    """Create the engine and every table the dashboard reads (the store's too)."""
    engine = make_engine(database_url)  # SQLite: WAL, so pages read while we write
    create_tables(engine)
    return engine


def write_delta(engine: Engine, messages: list[Result | Event]) -> None:
    """Roll a batch up and add it to the stored rows in one transaction."""
    delta = aggregate([m for m in messages if isinstance(m, Result)],
                      [m for m in messages if isinstance(m, Event)])
    with Session(engine) as session:
        apply_delta(session, delta)
        session.commit()


def _flushed(messages: list[Result | Event], seconds: float) -> None:
    FLUSH_SECONDS.observe(seconds)


def _handler(batcher: BatchCommitter[Result | Event], model: type[Result] | type[Event], source: str
             ) -> Callable[[AbstractIncomingMessage], Awaitable[None]]:
    async def handle(message: AbstractIncomingMessage) -> None:
        try:
            parsed: BaseModel = model.model_validate_json(message.body)
        except ValidationError as exc:
            raise RejectMessage(f"not a {model.__name__}: {exc.errors()[0]['msg']}") from None
        assert isinstance(parsed, Result | Event)
        await batcher.add(parsed)
        MESSAGES.labels(source).inc()

    return handle


async def every(interval_s: float, job: Callable[[], Awaitable[None]], name: str,
                stop: asyncio.Event) -> None:
    await every_interval(interval_s, job, name, stop,
                         on_failure=lambda: LOOP_FAILURES.labels(name).inc())


def broker_address(amqp_url: str) -> str:
    """Return the broker's host:port from its URL (no credentials: it goes into alerts)."""
    parsed = urlparse(amqp_url)
    return f"{parsed.hostname or 'localhost'}:{parsed.port or 5672}"


async def connect(clients: Clients, stop: asyncio.Event, retry_s: float) -> Bus | None:
    """Connect to RabbitMQ, trying again every `retry_s` until it answers (None: stopped)."""
    settings = clients.settings
    failing = False
    while not stop.is_set():
        try:
            return await clients.bus()
        except (AMQPError, OSError) as exc:
            if not failing:  # once per outage; the broker_unreachable alert says the rest
                log.warning("RabbitMQ at %s unreachable (%r); trying again every %.0f s",
                            broker_address(settings.amqp_url), exc, retry_s)
                failing = True
        try:
            await asyncio.wait_for(stop.wait(), retry_s)
        except TimeoutError:
            pass
    return None


async def serve(settings: Settings, stop: asyncio.Event, options: Options = Options()) -> None:
    """Collect until `stop` is set.

    The alerts are evaluated from the start, broker or not: while RabbitMQ does not answer,
    no queue is sampled and the `broker_unreachable` rule sees the last sample age.
    """
    async with open_clients(settings, SERVICE) as clients:
        await _collect(clients, stop, options)


async def _collect(clients: Clients, stop: asyncio.Event, options: Options) -> None:
    """Evaluate alerts from the start; sample and roll up once the broker answers."""
    settings, names = clients.settings, clients.names
    engine = await clients.engine(open_engine)
    evaluator = Evaluator(engine, names, watching_since=time.time(),
                          broker=broker_address(settings.amqp_url))

    async def evaluate() -> None:
        await asyncio.to_thread(evaluator.run_once, time.time())

    async def clean() -> None:
        def store() -> None:
            with Session(engine) as session:
                prune(session, time.time())
                session.commit()

        await asyncio.to_thread(store)

    loops_stop = asyncio.Event()
    loops = [asyncio.create_task(every(interval, job, name, loops_stop), name=name)
             for interval, job, name in ((options.eval_interval_s, evaluate, "evaluate"),
                                         (options.prune_interval_s, clean, "prune"))]
    try:
        bus = await connect(clients, stop, options.connect_retry_s)
        if bus is None:
            return
        mgmt = management_url(settings.amqp_url) if options.management_url is None \
            else options.management_url
        # The lane registry's client (bounded by the one timeout policy: an outage does not
        # hold up sampling; WorkQueues keeps the lanes it listed last).
        sampler = QueueSampler(bus.connection, settings.amqp_url, names.queues(), mgmt,
                               WorkQueues(clients.redis(), names, TIERS))

        async def sample() -> None:
            # A channel opened while the connection recovers may wait: give up, try next time.
            readings = await asyncio.wait_for(sampler.sample(), SAMPLE_TIMEOUT_S)
            now = time.time()

            def store() -> None:
                with Session(engine) as session:
                    record_readings(session, now, readings)
                    session.commit()

            await asyncio.to_thread(store)

        batcher = BatchCommitter[Result | Event](functools.partial(write_delta, engine),
                                                 BATCH_SIZE, options.flush_interval_s,
                                                 observe=_flushed)
        loops.append(asyncio.create_task(batcher.run(loops_stop), name="telemetry flusher"))
        loops.append(asyncio.create_task(
            every(options.sample_interval_s, sample, "sample", loops_stop), name="sample"))
        await declare_topology(await bus.connection.channel(), names)
        await bus.consume(names.dashboard_results, _handler(batcher, Result, "results"),
                          prefetch=options.prefetch)
        await bus.consume(names.dashboard_events, _handler(batcher, Event, "events"),
                          prefetch=options.prefetch)
        log.info("collecting %s and %s", names.dashboard_results, names.dashboard_events)
        await until_stopped(stop, *loops)
        await bus.stop_consuming(grace_s=10)
    finally:
        loops_stop.set()
        # The flusher's last batch too, before open_clients closes the bus and the engine.
        await asyncio.gather(*loops, return_exceptions=True)


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m services.dashboard.collector",
                                     description="Roll up agentq telemetry for the dashboard.")
    parser.add_argument("--sample-interval", type=float, default=5.0, metavar="S")
    parser.add_argument("--eval-interval", type=float, default=5.0, metavar="S",
                        help="seconds between alert evaluations (default 5)")
    parser.add_argument("--management-url", default=None,
                        help="RabbitMQ management API (default: broker host, port 15672; "
                             "'' to never use it)")
    args = parser.parse_args(argv)
    return Options(sample_interval_s=args.sample_interval, eval_interval_s=args.eval_interval,
                   management_url=args.management_url)


def main(argv: list[str] | None = None) -> int:
    """Run the collector until SIGTERM."""
    options = parse_args(argv)
    settings = Settings()

    async def service(s: Settings, stop: asyncio.Event) -> None:
        await serve(s, stop, options)

    return run(service, settings, SERVICE, METRICS_PORT)


if __name__ == "__main__":
    raise SystemExit(main())
