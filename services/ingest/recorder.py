"""The results recorder: write every Result onto its task row, in batches, then ack."""

from __future__ import annotations

import asyncio
import logging

from aio_pika.abc import AbstractIncomingMessage
from prometheus_client import Counter
from pydantic import ValidationError
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from services.common.amqp import Bus, RejectMessage, RequeueMessage
from services.common.models import Result
from services.common.settings import Settings
from services.common.store import make_engine, record_results
from services.common.topology import Names, declare_topology

log = logging.getLogger(__name__)
SERVICE = "recorder"
BATCH_SIZE = 200
BATCH_WAIT_S = 0.02
PREFETCH = 1000
RECORDED = Counter("agentq_recorder_results_total", "Results stored, by status", ["status"])


class BatchWriter:
    """Gather results for a few milliseconds and write them in one transaction.

    Each handler waits for the commit of the batch holding its result, so the helper acks a
    message only once its effect is durable.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._pending: list[tuple[Result, asyncio.Future[None]]] = []
        self._wakeup = asyncio.Event()

    async def write(self, result: Result) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((result, done))
        if len(self._pending) >= BATCH_SIZE:
            self._wakeup.set()
        await done

    async def run(self, stop: asyncio.Event) -> None:
        while not (stop.is_set() and not self._pending):
            try:
                await asyncio.wait_for(self._wakeup.wait(), BATCH_WAIT_S)
            except TimeoutError:
                pass
            self._wakeup.clear()
            if self._pending:
                await self.flush()

    async def flush(self) -> None:
        batch, self._pending = self._pending, []
        try:
            await asyncio.to_thread(record_results, self._engine, [r for r, _ in batch])
        except SQLAlchemyError as exc:
            log.error("could not record %d results: %s", len(batch), exc)
            for _, done in batch:
                done.set_exception(RequeueMessage(str(exc)))
            await asyncio.sleep(1)  # the database is down: do not spin on redeliveries
            return
        for result, done in batch:
            RECORDED.labels(result.status).inc()
            done.set_result(None)


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Record results until `stop` is set."""
    names = Names(settings.namespace)
    engine = await asyncio.to_thread(make_engine, settings.database_url)
    writer = BatchWriter(engine)

    async def handle(message: AbstractIncomingMessage) -> None:
        try:
            result = Result.model_validate_json(message.body)
        except ValidationError as exc:
            raise RejectMessage(f"not a Result: {exc.errors()[0]['msg']}") from None
        await writer.write(result)

    bus = await Bus.connect(settings.amqp_url, names, name=SERVICE)
    writer_stop = asyncio.Event()
    flusher = asyncio.create_task(writer.run(writer_stop))
    try:
        await declare_topology(await bus.connection.channel(), names)
        await bus.consume(names.results_store, handle, prefetch=PREFETCH)
        log.info("recorder consuming %s", names.results_store)
        await stop.wait()
        await bus.stop_consuming(grace_s=10)
    finally:
        writer_stop.set()
        await flusher
        await bus.close()
        engine.dispose()
