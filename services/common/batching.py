"""Write messages to the database in batches, acking each only once its batch is committed."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from services.common.amqp import RequeueMessage

log = logging.getLogger(__name__)
T = TypeVar("T")
OUTAGE_PAUSE_S = 1.0


class BatchCommitter(Generic[T]):
    """Gather items for a moment and write them in one transaction, in a thread.

    A handler awaits `add`, which returns once the batch holding its item is committed, or
    raises RequeueMessage when the write failed; so the AMQP helper acks a message only
    after its effect is durable, and one commit serves hundreds of messages.
    """

    def __init__(self, write: Callable[[list[T]], None], max_batch: int, max_wait_s: float,
                 observe: Callable[[list[T], float], None] | None = None) -> None:
        self._write = write
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._observe = observe
        self._pending: list[tuple[T, asyncio.Future[None]]] = []
        self._wakeup = asyncio.Event()

    async def add(self, item: T) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((item, done))
        if len(self._pending) >= self._max_batch:
            self._wakeup.set()
        await done

    async def run(self, stop: asyncio.Event) -> None:
        """Flush every `max_wait_s` (or when a batch is full) until `stop` and nothing is left."""
        while not (stop.is_set() and not self._pending):
            try:
                await asyncio.wait_for(self._wakeup.wait(), self._max_wait_s)
            except TimeoutError:
                pass
            self._wakeup.clear()
            if self._pending:
                await self.flush()

    async def flush(self) -> None:
        batch, self._pending = self._pending, []
        items = [item for item, _ in batch]
        started = time.perf_counter()
        try:
            await asyncio.to_thread(self._write, items)
        except Exception as exc:  # database down, or a bug: give the messages back, go on
            log.error("could not store %d messages: %s", len(batch), exc,
                      exc_info=not isinstance(exc, SQLAlchemyError))
            for _, done in batch:
                if not done.done():
                    done.set_exception(RequeueMessage(str(exc)))
            await asyncio.sleep(OUTAGE_PAUSE_S)  # do not spin on redeliveries
            return
        if self._observe is not None:
            self._observe(items, time.perf_counter() - started)
        for _, done in batch:
            # A handler cancelled meanwhile (its connection dropped) has no one waiting: its
            # message comes back by redelivery, and the write it shared is idempotent.
            if not done.done():
                done.set_result(None)
