"""Queue accepted tasks from the HTTP door's threads, as the AMQP door does from its loop.

Publishing goes through `services.common.sync_publish` (the encoding, message properties and
`PublishFailed` of `Bus.publish`) to `task_route(...)`, the route both doors share; the
topology is declared by `services.common.topology.declare` itself, on one event loop thread
this publisher owns (never `asyncio.run` inside a request thread).
"""

from __future__ import annotations

import logging
import threading
import time

import aio_pika

from services.common.loop_thread import LoopThread
from services.common.models import Task
from services.common.sync_publish import BROKER_ERRORS, BrokerDown, SyncPublisher, Unroutable
from services.common.topology import Names, declare
from services.ingest.accept import task_route

log = logging.getLogger(__name__)

__all__ = ["BrokerDown", "Publisher"]  # BrokerDown: importable from here as before

DECLARE_RETRY_S = 5.0
DECLARE_TIMEOUT_S = 5.0


class Publisher:
    """The HTTP door's `TaskPublisher`, plus the backlog and health probes of its routes."""

    def __init__(self, amqp_url: str, names: Names, backlog_ttl_s: float = 1.0) -> None:
        self._amqp_url = amqp_url
        self._names = names
        self._sync = SyncPublisher(amqp_url, f"{names.ns}.ingest")
        self._loop = LoopThread(f"{names.ns}.ingest.topology")
        self._backlog_ttl_s = backlog_ttl_s
        self._backlog_lock = threading.Lock()
        self._backlog_cache: tuple[float, int | None] = (float("-inf"), None)
        self._topology_ready = False
        self._next_declare_at = 0.0

    def ensure_topology(self) -> bool:
        """Declare every exchange and queue (idempotent); False if the broker did not answer."""
        now = time.monotonic()
        if now < self._next_declare_at or self._sync.broker_down():
            return self._topology_ready  # a down broker is not asked again on every request
        self._next_declare_at = now + DECLARE_RETRY_S
        try:
            self._loop.run(declare(self._amqp_url, self._names), DECLARE_TIMEOUT_S)
        except (aio_pika.exceptions.AMQPError, OSError, TimeoutError) as exc:
            log.warning("could not declare the RabbitMQ topology of %s: %r", self._names.ns, exc)
            self._sync.back_off()
            return False
        self._topology_ready = True
        return True

    def publish_task(self, task: Task) -> None:
        """Publish a task to the tasks exchange and wait for the broker's confirm."""
        if not self._topology_ready:
            self.ensure_topology()
        exchange, routing_key = task_route(self._names)
        try:
            self._sync.publish(exchange, routing_key, task, priority=task.priority)
        except Unroutable:
            # No queue bound, or no exchange: the broker lost its topology; declare it again.
            self._topology_ready = False
            self._next_declare_at = 0.0
            raise

    def backlog(self) -> int | None:
        """Return how many tasks wait in the tasks queue (cached briefly); None if unknown."""
        with self._backlog_lock:
            at, value = self._backlog_cache
            if time.monotonic() - at < self._backlog_ttl_s:
                return value
        try:
            value = self._sync.run(lambda channel: channel.queue_declare(
                self._names.tasks, passive=True).method.message_count)
        except (*BROKER_ERRORS, BrokerDown) as exc:
            log.debug("backlog of %s unknown: %r", self._names.tasks, exc)
            value = None
        with self._backlog_lock:
            self._backlog_cache = (time.monotonic(), value)
        return value

    def healthy(self) -> bool:
        """Return whether this thread can talk to RabbitMQ."""
        try:
            self._sync.run(lambda channel: channel.connection.process_data_events(time_limit=0))
        except (*BROKER_ERRORS, BrokerDown) as exc:
            log.info("RabbitMQ unreachable: %r", exc)
            return False
        return True

    def close(self) -> None:
        """Close this thread's connection and the topology loop."""
        self._sync.close()
        self._loop.close()
