"""The AMQP door of ingest: validate tasks sent to `<ns>.submit`, store them, queue them."""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import Sequence
from typing import NoReturn

from aio_pika.abc import AbstractIncomingMessage
from prometheus_client import REGISTRY, CollectorRegistry
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from services.common import runtime
from services.common.amqp import Bus, PublishFailed, RejectMessage, RequeueMessage
from services.common.models import Task
from services.common.settings import Settings
from services.common.store import (
    ACCEPTED,
    forget_task,
    insert_task,
    is_unpublished,
    make_engine,
    mark_queued,
    unpublished_tasks,
)
from services.common.topology import SUBMIT_ROUTING_KEY, Names, declare_topology
from services.ingest.metrics import IngestMetrics, make_metrics
from services.ingest.validation import InvalidTask, check_size, decode_json, parse_task

log = logging.getLogger(__name__)

SUBMIT_PREFETCH = 200
# Tasks stored but still unpublished after SWEEP_AFTER_S are published by the sweeper.
SWEEP_INTERVAL_S = 30.0
SWEEP_AFTER_S = 60.0
DEFAULT_METRICS_PORT = 9101
STOP_GRACE_S = 30.0


async def mark_published(engine: Engine, task: Task) -> None:
    try:
        await asyncio.to_thread(mark_queued, engine, task.tenant, task.id)
    except SQLAlchemyError:  # it is queued; the sweeper may publish it once more, that is all
        log.warning("could not mark task %s/%s queued", task.tenant, task.id, exc_info=True)


class Intake:
    """The handler of `<ns>.submit`: one message in, at most one task out to `<ns>.tasks`."""

    def __init__(self, bus: Bus, engine: Engine, metrics: IngestMetrics,
                 max_body_bytes: int = 0) -> None:
        self._bus = bus
        self._engine = engine
        self._metrics = metrics
        self._max_body_bytes = max_body_bytes

    async def __call__(self, message: AbstractIncomingMessage) -> None:
        try:
            check_size(message.body, self._max_body_bytes)
            task = parse_task(decode_json(message.body))
        except InvalidTask as exc:
            self._metrics.rejected.labels(door="amqp", reason="invalid").inc()
            raise RejectMessage(f"{exc.field}: {exc.message}") from None
        task = task.stamped(reply_to=message.reply_to)
        try:
            row, created = await asyncio.to_thread(insert_task, self._engine, task)
        except SQLAlchemyError as exc:
            await self._requeue(f"cannot store task {task.id}: {exc!r}")
        if not created:
            # A redelivered message whose task was stored but never confirmed comes from a
            # consumer that died in between: publish the stored task rather than risk losing
            # it (a rare duplicate is the lesser harm). So does a resubmit of a stale one.
            retry = message.redelivered and row["status"] == ACCEPTED
            if not (retry or is_unpublished(row, time.time())):
                self._metrics.duplicates.labels(door="amqp").inc()
                return
            task = Task.model_validate_json(row["task_json"])
        try:
            await self._bus.publish(self._bus.names.tasks, SUBMIT_ROUTING_KEY, task,
                                    priority=task.priority)
        except PublishFailed as exc:
            if created:  # so that the redelivery stores and publishes it afresh
                await self._forget(task)
            await self._requeue(f"cannot queue task {task.id}: {exc}")
        await mark_published(self._engine, task)
        self._metrics.accepted.labels(door="amqp").inc()

    async def sweep(self) -> int:
        """Publish the tasks stored and never published (an ingest process died between the
        two steps and no client retried); return how many."""
        stale = await asyncio.to_thread(unpublished_tasks, self._engine,
                                        time.time() - SWEEP_AFTER_S)
        for task in stale:
            log.warning("task %s was stored but never queued; queueing it now", task.id)
            await self._bus.publish(self._bus.names.tasks, SUBMIT_ROUTING_KEY, task,
                                    priority=task.priority)
            await mark_published(self._engine, task)
        return len(stale)

    async def _forget(self, task: Task) -> None:
        try:
            await asyncio.to_thread(forget_task, self._engine, task.tenant, task.id)
        except SQLAlchemyError:
            # The redelivery still republishes it: the row is queued and the message redelivered.
            log.warning("could not forget unqueued task %s/%s", task.tenant, task.id,
                        exc_info=True)

    async def _requeue(self, reason: str) -> NoReturn:
        log.warning("%s; giving the message back", reason)
        raise RequeueMessage(reason)


async def run(settings: Settings, stop: asyncio.Event | None = None,
              metrics: IngestMetrics | None = None) -> None:
    """Consume `<ns>.submit` until `stop` is set (forever without one), then drain and close."""
    names = Names(settings.namespace)
    metrics = metrics or make_metrics(CollectorRegistry())
    engine = await asyncio.to_thread(make_engine, settings.database_url)
    bus = await Bus.connect(settings.amqp_url, names, name=f"{names.ns}.intake")
    try:
        channel = await bus.connection.channel()
        await declare_topology(channel, names)
        await channel.close()
        intake = Intake(bus, engine, metrics, settings.max_body_bytes)
        await bus.consume(names.submit, intake, prefetch=SUBMIT_PREFETCH)
        log.info("intake consuming %s", names.submit)
        stop = stop or asyncio.Event()
        sweeper = asyncio.create_task(
            runtime.every(SWEEP_INTERVAL_S, intake.sweep, "sweep", stop), name="sweeper")
        await runtime.until_stopped(stop, sweeper)
        await sweeper
        log.info("intake stopping")
    finally:
        await bus.stop_consuming(grace_s=STOP_GRACE_S)
        await bus.close()
        engine.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the AMQP door until SIGTERM or SIGINT."""
    argparse.ArgumentParser(prog="agentq intake", description=__doc__).parse_args(argv)
    metrics = make_metrics(REGISTRY)

    async def service(settings: Settings, stop: asyncio.Event) -> None:
        await run(settings, stop, metrics)

    return runtime.run(service, Settings(), "intake", DEFAULT_METRICS_PORT)
