"""Publish from threads that have no event loop (Flask request threads), the way `Bus` does.

The message is built as `services.common.amqp.Bus.publish` builds it (the same `encode`,
`content_type`, persistent delivery, mandatory routing, publisher confirms) and every broker
failure comes out as the same `PublishFailed`. One pika connection per thread, because pika
connections are not thread-safe.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.adapters.utils.connection_workflow import AMQPConnectorException
from pydantic import BaseModel

from services.common.amqp import PublishFailed, encode

log = logging.getLogger(__name__)

T = TypeVar("T")

# A cached connection the broker has closed (restart, missed heartbeats while idle) shows up
# as one of these on first use; one fresh connection is then worth a try.
# pika's connector raises its own exceptions (AMQPConnectorStackTimeout when a broker
# takes the TCP connection and never completes the handshake), outside AMQPError.
_CONNECTION_ERRORS = (pika.exceptions.AMQPConnectionError,
                      pika.exceptions.ChannelWrongStateError, AMQPConnectorException, OSError)
BROKER_ERRORS = (pika.exceptions.AMQPError, AMQPConnectorException, OSError)
BLOCKED_CONNECTION_TIMEOUT_S = 30.0
# A connection attempt gives up after this long (pika's default is 15 s per attempt)...
CONNECT_TIMEOUT_S = 3.0
# ... and after one fails, every thread answers at once for this long instead of each
# waiting out its own attempt: a broker that stops answering gets fast 503s, not a pile-up.
BROKER_DOWN_BACKOFF_S = 5.0


class BrokerDown(PublishFailed):
    """The broker did not answer a moment ago; not asked again yet."""


class Unroutable(PublishFailed):
    """The broker has no exchange or no bound queue for the message: its topology is gone."""


def connection_parameters(amqp_url: str, connection_name: str) -> pika.URLParameters:
    """Return pika parameters that fail fast instead of hanging a request thread."""
    params = pika.URLParameters(amqp_url)
    if params.blocked_connection_timeout is None:
        # Under a broker memory alarm publishes block forever; fail them instead.
        params.blocked_connection_timeout = BLOCKED_CONNECTION_TIMEOUT_S
    params.client_properties = {"connection_name": connection_name}
    params.socket_timeout = min(params.socket_timeout or CONNECT_TIMEOUT_S, CONNECT_TIMEOUT_S)
    params.stack_timeout = min(params.stack_timeout or CONNECT_TIMEOUT_S, CONNECT_TIMEOUT_S)
    return params


class SyncPublisher:
    """A confirming pika channel per thread, publishing as `Bus.publish` does."""

    def __init__(self, amqp_url: str, connection_name: str) -> None:
        self._params = connection_parameters(amqp_url, connection_name)
        self._local = threading.local()
        self._down_until = 0.0  # monotonic time until which the broker counts as down

    def broker_down(self) -> bool:
        """Return whether the broker failed to answer a moment ago (not asked again yet)."""
        return time.monotonic() < self._down_until

    def back_off(self) -> None:
        """Count the broker as down for BROKER_DOWN_BACKOFF_S (it failed to answer elsewhere)."""
        self._down_until = time.monotonic() + BROKER_DOWN_BACKOFF_S

    def publish(self, exchange: str, routing_key: str,
                body: BaseModel | bytes | Mapping[str, Any], *,
                headers: Mapping[str, Any] | None = None, priority: int | None = None,
                reply_to: str | None = None, correlation_id: str | None = None,
                message_id: str | None = None, mandatory: bool = True) -> None:
        """Publish persistently and wait for the broker's confirm; `PublishFailed` if not."""
        payload = encode(body)
        properties = pika.BasicProperties(
            content_type="application/json", delivery_mode=pika.DeliveryMode.Persistent,
            headers=dict(headers or {}), priority=priority, reply_to=reply_to,
            correlation_id=correlation_id, message_id=message_id)
        target = f"{exchange or '(default)'}/{routing_key}"
        try:
            self.run(lambda channel: channel.basic_publish(exchange, routing_key, payload,
                                                           properties, mandatory=mandatory))
        except (pika.exceptions.UnroutableError, pika.exceptions.ChannelClosedByBroker) as exc:
            raise Unroutable(f"publish to {target}: {exc!r}") from None
        except BROKER_ERRORS as exc:
            raise PublishFailed(f"publish to {target}: {exc!r}") from None

    def run(self, action: Callable[[BlockingChannel], T]) -> T:
        """Run `action` on this thread's channel, on a fresh connection once if the cached
        one turns out closed; pika's errors and `BrokerDown` pass through."""
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

    def close(self) -> None:
        """Close this thread's connection."""
        self._drop()

    def _channel(self) -> tuple[BlockingChannel, bool]:
        """Return this thread's confirming channel and whether it was already open."""
        channel: BlockingChannel | None = getattr(self._local, "channel", None)
        if channel is not None and channel.is_open:
            return channel, True
        connection: BlockingConnection | None = getattr(self._local, "connection", None)
        reused = connection is not None and connection.is_open
        if connection is None or not connection.is_open:
            if self.broker_down():
                raise BrokerDown("RabbitMQ did not answer a moment ago")
            try:
                connection = BlockingConnection(self._params)
            except BROKER_ERRORS:
                self.back_off()
                raise
            self._down_until = 0.0
            self._local.connection = connection
        try:
            channel = connection.channel()
            channel.confirm_delivery()
        except BROKER_ERRORS:
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
            except BROKER_ERRORS as exc:  # already half-closed: nothing left to release
                log.debug("closing a broken RabbitMQ connection: %r", exc)
