"""The AMQP door of ingest: validate tasks sent to `<ns>.submit`, store them, queue them."""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, TypeVar

from aio_pika.abc import AbstractIncomingMessage
from prometheus_client import REGISTRY, CollectorRegistry
from sqlalchemy import Engine

from services.common import runtime
from services.common.amqp import Bus, PublishFailed, RejectMessage, RequeueMessage
from services.common.clients import open_clients
from services.common.settings import Settings
from services.common.store import UNPUBLISHED_AFTER_S
from services.common.topology import Names, declare_topology
from services.ingest.accept import StoreUnavailable, accept_task, queue_stored
from services.ingest.loop_publisher import LoopTaskPublisher
from services.ingest.metrics import IngestMetrics, make_metrics
from services.ingest.sql_store import SqlTaskStore
from services.ingest.validation import InvalidTask, check_size, decode_json, parse_task

log = logging.getLogger(__name__)

T = TypeVar("T")

SUBMIT_PREFETCH = 200
# Tasks stored but still unpublished after RESEND_AFTER_S are published again (the resend).
# The same age as the one after which a retry republishes (UNPUBLISHED_AFTER_S): a task whose
# ingest process died before the broker's confirm, and whose client's retry came too soon to
# republish it, waits at most ~20 s, not the 60-90 s it did (the fault suite's quiet window
# is 30 s). The query reads two indexed columns, so every 5 s costs the store little.
RESEND_INTERVAL_S = 5.0
RESEND_AFTER_S = UNPUBLISHED_AFTER_S
DEFAULT_METRICS_PORT = 9101
STOP_GRACE_S = 30.0
# accept_task holds its thread through the store and the broker's confirm: asyncio's default
# pool (cores + 4) would cap the door at a handful of tasks in hand out of SUBMIT_PREFETCH.
ACCEPT_THREADS = 16


class Intake:
    """The handler of `<ns>.submit`: one message in, at most one task out to `<ns>.tasks`."""

    def __init__(self, bus: Bus, engine: Engine, metrics: IngestMetrics,
                 max_body_bytes: int = 0, executor: Executor | None = None) -> None:
        self._bus = bus
        self._store = SqlTaskStore(engine)
        self._metrics = metrics
        self._max_body_bytes = max_body_bytes
        self._executor = executor  # None: asyncio's default one

    async def __call__(self, message: AbstractIncomingMessage) -> None:
        try:
            check_size(message.body, self._max_body_bytes)
            task = parse_task(decode_json(message.body))
        except InvalidTask as exc:
            self._metrics.rejected.labels(door="amqp", reason="invalid").inc()
            raise RejectMessage(f"{exc.field}: {exc.message}") from None
        task = task.stamped(reply_to=message.reply_to)
        try:
            # In a thread: the store is synchronous; the publish itself runs on this loop.
            accepted = await self._in_thread(accept_task, task, self._store, self._publisher(),
                                             time.time(), bool(message.redelivered))
        except (StoreUnavailable, PublishFailed) as exc:
            # A row stored by this delivery was forgotten: the redelivery starts afresh.
            log.warning("cannot queue task %s: %s; giving the message back", task.id, exc)
            raise RequeueMessage(str(exc)) from None
        counter = self._metrics.duplicates if accepted.duplicate else self._metrics.accepted
        counter.labels(door="amqp").inc()

    async def resend(self) -> int:
        """Publish the tasks stored and never published (an ingest process died between the
        two steps and no client retried); return how many."""
        stale = await self._in_thread(self._store.unpublished, RESEND_AFTER_S)
        publisher = self._publisher()
        for task in stale:
            log.warning("task %s was stored but never queued; queueing it now", task.id)
            await self._in_thread(queue_stored, task, self._store, publisher)
        return len(stale)

    def _publisher(self) -> LoopTaskPublisher:
        return LoopTaskPublisher(self._bus, asyncio.get_running_loop())

    async def _in_thread(self, call: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call, *args)


async def run(settings: Settings, stop: asyncio.Event | None = None,
              metrics: IngestMetrics | None = None) -> None:
    """Consume `<ns>.submit` until `stop` is set (forever without one), then drain and close."""
    names = Names(settings.namespace)
    metrics = metrics or make_metrics(CollectorRegistry())
    async with open_clients(settings, f"{names.ns}.intake") as clients:
        engine = await clients.engine()
        bus = await clients.bus()
        executor = ThreadPoolExecutor(ACCEPT_THREADS, thread_name_prefix="accept")
        try:
            channel = await bus.connection.channel()
            await declare_topology(channel, names)
            await channel.close()
            intake = Intake(bus, engine, metrics, settings.max_body_bytes, executor)
            await bus.consume(names.submit, intake, prefetch=SUBMIT_PREFETCH)
            log.info("intake consuming %s", names.submit)
            stop = stop or asyncio.Event()
            resender = asyncio.create_task(
                runtime.every(RESEND_INTERVAL_S, intake.resend, "resend", stop), name="resend")
            await runtime.until_stopped(stop, resender)
            await resender
            log.info("intake stopping")
        finally:
            # Drain before the clients close (the bus, then the engine, as open_clients does).
            await bus.stop_consuming(grace_s=STOP_GRACE_S)
            executor.shutdown(wait=False)  # the drain above left it nothing to run


def main(argv: Sequence[str] | None = None) -> int:
    """Run the AMQP door until SIGTERM or SIGINT."""
    argparse.ArgumentParser(prog="agentq intake", description=__doc__).parse_args(argv)
    metrics = make_metrics(REGISTRY)

    async def service(settings: Settings, stop: asyncio.Event) -> None:
        await run(settings, stop, metrics)

    return runtime.run(service, Settings(), "intake", DEFAULT_METRICS_PORT)
