"""The AMQP door's `TaskPublisher`: `accept_task` runs in a thread, the Bus on its loop."""

from __future__ import annotations

import asyncio
import concurrent.futures

from services.common.amqp import Bus, PublishFailed
from services.common.models import Task
from services.ingest.accept import task_route

# Bus.publish waits for the confirm; a broker that blocks publishes (memory alarm) must not
# hold accept_task's thread forever: the message is given back instead.
PUBLISH_TIMEOUT_S = 30.0


async def publish_task(bus: Bus, task: Task) -> None:
    """Publish an accepted task to the route both doors use and wait for the confirm."""
    exchange, routing_key = task_route(bus.names)
    await bus.publish(exchange, routing_key, task, priority=task.priority)


class LoopTaskPublisher:
    """Publish on `loop` (where `bus` lives) from another thread, waiting for the confirm."""

    def __init__(self, bus: Bus, loop: asyncio.AbstractEventLoop,
                 timeout_s: float = PUBLISH_TIMEOUT_S) -> None:
        self._bus = bus
        self._loop = loop
        self._timeout_s = timeout_s

    def publish_task(self, task: Task) -> None:
        future = asyncio.run_coroutine_threadsafe(publish_task(self._bus, task), self._loop)
        try:
            future.result(self._timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise PublishFailed(f"task {task.id} not confirmed within {self._timeout_s} s") \
                from None
        except concurrent.futures.CancelledError:
            raise PublishFailed(f"task {task.id}: the publish was cancelled") from None
