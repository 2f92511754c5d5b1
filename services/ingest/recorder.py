"""The results recorder: write every Result onto its task row, in batches, then ack."""

from __future__ import annotations

import asyncio
import functools
import logging

from aio_pika.abc import AbstractIncomingMessage
from prometheus_client import Counter
from pydantic import ValidationError

from services.common.amqp import RejectMessage
from services.common.batching import BatchCommitter
from services.common.clients import Clients, open_clients
from services.common.models import Event, Result
from services.common.runtime import until_stopped
from services.common.settings import Settings
from services.common.store import mark_running, record_results
from services.common.topology import declare_topology

log = logging.getLogger(__name__)
SERVICE = "recorder"
BATCH_SIZE = 200
BATCH_WAIT_S = 0.02
PREFETCH = 1000
RECORDED = Counter("agentq_recorder_results_total", "Results stored, by status", ["status"])


def _count(results: list[Result], _seconds: float) -> None:
    for result in results:
        RECORDED.labels(result.status).inc()


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Record results until `stop` is set."""
    async with open_clients(settings, SERVICE) as clients:
        await _record(clients, stop)


async def _record(clients: Clients, stop: asyncio.Event) -> None:
    """Consume stored results and started events, writing them in batches, until `stop`."""
    names = clients.names
    engine = await clients.engine()
    writer = BatchCommitter[Result](functools.partial(record_results, engine), BATCH_SIZE,
                                    BATCH_WAIT_S, observe=_count)

    running = BatchCommitter[tuple[str, str]](functools.partial(mark_running, engine),
                                              BATCH_SIZE, BATCH_WAIT_S)

    async def handle(message: AbstractIncomingMessage) -> None:
        try:
            result = Result.model_validate_json(message.body)
        except ValidationError as exc:
            raise RejectMessage(f"not a Result: {exc.errors()[0]['msg']}") from None
        await writer.add(result)

    async def handle_started(message: AbstractIncomingMessage) -> None:
        try:
            event = Event.model_validate_json(message.body)
        except ValidationError as exc:
            raise RejectMessage(f"not an Event: {exc.errors()[0]['msg']}") from None
        if event.task_id and event.tenant:
            await running.add((event.tenant, event.task_id))

    bus = await clients.bus()
    writer_stop = asyncio.Event()
    flushers = [asyncio.create_task(w.run(writer_stop), name=f"{label} flusher")
                for label, w in (("results", writer), ("running", running))]
    try:
        await declare_topology(await bus.connection.channel(), names)
        await bus.consume(names.results_store, handle, prefetch=PREFETCH)
        await bus.consume(names.started_store, handle_started, prefetch=PREFETCH)
        log.info("recorder consuming %s and %s", names.results_store, names.started_store)
        await until_stopped(stop, *flushers)
        await bus.stop_consuming(grace_s=10)
    finally:
        writer_stop.set()
        await asyncio.gather(*flushers)  # before the clients close: the last batches commit
