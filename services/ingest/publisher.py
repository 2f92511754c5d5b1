"""Publish accepted tasks to RabbitMQ from the HTTP door's threads, with publisher confirms."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import aio_pika
import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.adapters.utils.connection_workflow import AMQPConnectorException

from services.common.amqp import PublishFailed
from services.common.models import Task
from services.common.topology import SUBMIT_ROUTING_KEY, Names, declare

log = logging.getLogger(__name__)

T = TypeVar("T")

# A cached connection the broker has closed (restart, missed heartbeats while idle) shows up
# as one of these on first use; one fresh connection is then worth a try.
# pika's connector raises its own exceptions (AMQPConnectorStackTimeout when a broker
# takes the TCP connection and never completes the handshake), outside AMQPError.
_CONNECTION_ERRORS = (pika.exceptions.AMQPConnectionError,
                      pika.exceptions.ChannelWrongStateError, AMQPConnectorException, OSError)
_BROKER_ERRORS = (pika.exceptions.AMQPError, AMQPConnectorException, OSError)
DECLARE_RETRY_S = 5.0
DECLARE_TIMEOUT_S = 5.0
BLOCKED_CONNECTION_TIMEOUT_S = 30.0
# A connection attempt gives up after this long (pika's default is 15 s per attempt)...
CONNECT_TIMEOUT_S = 3.0
# ... and after one fails, every thread answers at once for this long instead of each
# waiting out its own attempt: a broker that stops answering gets fast 503s, not a pile-up.
BROKER_DOWN_HOLD_S = 5.0


class BrokerDown(PublishFailed):
    """The broker did not answer a moment ago; not asked again yet."""


class Publisher:
    """One confirming pika connection per thread (pika connections are not thread-safe)."""

    def __init__(self, amqp_url: str, names: Names, backlog_ttl_s: float = 1.0) -> None:
        self._amqp_url = amqp_url
        self._names = names
        self._params = pika.URLParameters(amqp_url)
        if self._params.blocked_connection_timeout is None:
            # Under a broker memory alarm publishes block forever; fail them (503) instead.
            self._params.blocked_connection_timeout = BLOCKED_CONNECTION_TIMEOUT_S
        self._params.client_properties = {"connection_name": f"{names.ns}.ingest"}
        self._params.socket_timeout = min(self._params.socket_timeout or CONNECT_TIMEOUT_S,
                                          CONNECT_TIMEOUT_S)
        self._params.stack_timeout = min(self._params.stack_timeout or CONNECT_TIMEOUT_S,
                                         CONNECT_TIMEOUT_S)
        self._down_until = 0.0  # monotonic time until which the broker counts as down
        self._local = threading.local()
        self._backlog_ttl_s = backlog_ttl_s
        self._backlog_lock = threading.Lock()
        self._backlog_cache: tuple[float, int | None] = (float("-inf"), None)
        self._topology_ready = False
        self._next_declare_at = 0.0

    def ensure_topology(self) -> bool:
        """Declare every exchange and queue (idempotent); False if the broker did not answer."""
        now = time.monotonic()
        if now < max(self._next_declare_at, self._down_until):
            return self._topology_ready  # a down broker is not asked again on every request
        self._next_declare_at = now + DECLARE_RETRY_S
        try:
            asyncio.run(asyncio.wait_for(declare(self._amqp_url, self._names),
                                         DECLARE_TIMEOUT_S))
        except (aio_pika.exceptions.AMQPError, OSError, TimeoutError) as exc:
            log.warning("could not declare the RabbitMQ topology of %s: %r", self._names.ns, exc)
            self._down_until = time.monotonic() + BROKER_DOWN_HOLD_S
            return False
        self._topology_ready = True
        return True

    def publish_task(self, task: Task) -> None:
        """Publish a task to the tasks exchange persistently and wait for the broker's confirm."""
        if not self._topology_ready:
            self.ensure_topology()
        body = task.model_dump_json().encode()
        properties = pika.BasicProperties(content_type="application/json",
                                          delivery_mode=pika.DeliveryMode.Persistent,
                                          priority=task.priority)

        def publish(channel: BlockingChannel) -> None:
            channel.basic_publish(self._names.tasks, SUBMIT_ROUTING_KEY, body, properties,
                                  mandatory=True)

        try:
            self._run(publish)
        except (pika.exceptions.UnroutableError, pika.exceptions.ChannelClosedByBroker) as exc:
            # No queue bound, or no exchange: the broker lost its topology; declare it again.
            self._topology_ready = False
            self._next_declare_at = 0.0
            raise PublishFailed(f"task {task.id} not routable to {self._names.tasks}: "
                                f"{exc!r}") from None
        except _BROKER_ERRORS as exc:
            raise PublishFailed(f"task {task.id} not confirmed: {exc!r}") from None

    def backlog(self) -> int | None:
        """Return how many tasks wait in the tasks queue (cached briefly); None if unknown."""
        with self._backlog_lock:
            at, value = self._backlog_cache
            if time.monotonic() - at < self._backlog_ttl_s:
                return value
        try:
            value = self._run(lambda channel: channel.queue_declare(
                self._names.tasks, passive=True).method.message_count)
        except (*_BROKER_ERRORS, BrokerDown) as exc:
            log.debug("backlog of %s unknown: %r", self._names.tasks, exc)
            value = None
        with self._backlog_lock:
            self._backlog_cache = (time.monotonic(), value)
        return value

    def healthy(self) -> bool:
        """Return whether this thread can talk to RabbitMQ."""
        try:
            self._run(lambda channel: channel.connection.process_data_events(time_limit=0))
        except (*_BROKER_ERRORS, BrokerDown) as exc:
            log.info("RabbitMQ unreachable: %r", exc)
            return False
        return True

    def close(self) -> None:
        """Close this thread's connection."""
        self._drop()

    def _run(self, action: Callable[[BlockingChannel], T]) -> T:
        channel, reused = self._channel()
        try:
            return action(channel)
        except _CONNECTION_ERRORS:
            self._drop()
            if not reused:
                raise
        log.info("RabbitMQ connection was closed; reconnecting once")
        channel, _ = self._channel()
        try:
            return action(channel)
        except _CONNECTION_ERRORS:
            self._drop()
            raise

    def _channel(self) -> tuple[BlockingChannel, bool]:
        """Return this thread's confirming channel and whether it was already open."""
        channel: BlockingChannel | None = getattr(self._local, "channel", None)
        if channel is not None and channel.is_open:
            return channel, True
        connection: BlockingConnection | None = getattr(self._local, "connection", None)
        reused = connection is not None and connection.is_open
        if connection is None or not connection.is_open:
            if time.monotonic() < self._down_until:
                raise BrokerDown("RabbitMQ did not answer a moment ago")
            try:
                connection = BlockingConnection(self._params)
            except _BROKER_ERRORS:
                self._down_until = time.monotonic() + BROKER_DOWN_HOLD_S
                raise
            self._down_until = 0.0
            self._local.connection = connection
        try:
            channel = connection.channel()
            channel.confirm_delivery()
        except _BROKER_ERRORS:
            self._drop()
            raise
        self._local.channel = channel
        return channel, reused

    def _drop(self) -> None:
        connection: BlockingConnection | None = getattr(self._local, "connection", None)
        self._local.connection = None
        self._local.channel = None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except _BROKER_ERRORS as exc:  # already half-closed: nothing left to release
                log.debug("closing a broken RabbitMQ connection: %r", exc)
