"""The one AMQP helper every async service uses: connect, publish with confirms, consume.

Ack and nack are decided here and only here: a handler returns (ack), raises `RejectMessage`
(malformed: parked in the `rejected` queue with the reason, then acked) or `RequeueMessage`
(not now: given back; so is a message whose handler could not publish, `PublishFailed`).
Anything else is a bug or an outage: the message is given back after a pause, and parked in
`rejected` with the error once it has failed its handler POISON_AFTER_CRASHES times.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, Protocol

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from pydantic import BaseModel

from services.common.topology import ERROR_HEADER, Names

log = logging.getLogger(__name__)


class IncomingMessage(Protocol):
    """What a handler reads of a delivered message (aio-pika's, or the in-memory broker's)."""

    @property
    def body(self) -> bytes: ...
    @property
    def routing_key(self) -> str | None: ...
    @property
    def exchange(self) -> str | None: ...
    @property
    def headers(self) -> Mapping[str, Any]: ...
    @property
    def reply_to(self) -> str | None: ...
    @property
    def correlation_id(self) -> str | None: ...
    @property
    def message_id(self) -> str | None: ...


Handler = Callable[[AbstractIncomingMessage], Awaitable[None]]
UNEXPECTED_ERROR_PAUSE_S = 1.0
# A message whose handler raised something unexpected this many times is parked in
# `rejected` with the error (well under the queues' delivery limit of 20).
POISON_AFTER_CRASHES = 5
REQUEUE_PAUSE_S = 1.0


# What settling a message raises once its channel went with the connection (aio-pika raises
# ChannelInvalidStateError, a RuntimeError); the broker then gives the message back itself.
_CHANNEL_GONE = (aio_pika.exceptions.AMQPError, aio_pika.exceptions.ChannelInvalidStateError,
                 ConnectionError)


async def _ack(message: AbstractIncomingMessage) -> None:
    try:
        await message.ack()
    except _CHANNEL_GONE as exc:
        log.warning("could not ack a message from %s (%r): the broker delivers it again",
                    message.routing_key, exc)


async def _nack(message: AbstractIncomingMessage) -> None:
    """Give a message back to its queue; on a closed channel the broker already has."""
    try:
        await message.nack(requeue=True)
    except _CHANNEL_GONE as exc:
        log.debug("nack of a message from %s on a closed channel: %r", message.routing_key,
                  exc)


def deliveries_before(headers: Mapping[str, Any] | None) -> int:
    """Return how often a message was delivered before (quorum queues count it)."""
    count = (headers or {}).get("x-delivery-count", 0)
    return count if isinstance(count, int) and count >= 0 else 0


class RejectMessage(Exception):
    """The message can never be processed; park it in `rejected` with this reason."""


class RequeueMessage(Exception):
    """The message cannot be processed now; give it back to the queue."""


class PublishFailed(Exception):
    """The broker did not confirm a publish (nacked, unroutable or connection lost)."""


def poison_reason(exc: BaseException) -> str:
    return f"handler failed {POISON_AFTER_CRASHES} times: {type(exc).__name__}: {exc}"


def rejected_headers(headers: Mapping[str, Any] | None, reason: str, exchange: str | None,
                     routing_key: str | None) -> dict[str, Any]:
    """Return the headers of a message parked in `rejected`: why, and where it came from."""
    return {**(headers or {}), ERROR_HEADER: reason[:4000],
            "x-agentq-source": f"{exchange}/{routing_key}"}


def encode(body: BaseModel | bytes | Mapping[str, Any]) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, BaseModel):
        return body.model_dump_json().encode()
    return json.dumps(body, separators=(",", ":")).encode()


Settlement = Literal["ack", "reject", "requeue", "retry", "poison"]


def settlement(error: BaseException | None, deliveries: int) -> Settlement:
    """Decide how to settle a message whose handler ended with `error` (None: returned) on its
    `deliveries`-th delivery: ack, park as rejected, give back after a pause ("requeue": not
    now, "retry": an unexpected error), or park as poison."""
    if error is None:
        return "ack"
    if isinstance(error, RejectMessage):
        return "reject"
    if isinstance(error, RequeueMessage | PublishFailed):
        return "requeue"
    return "poison" if deliveries >= POISON_AFTER_CRASHES else "retry"


class Broker(Protocol):
    """What handlers and publishers need of a broker: `Bus` (aio-pika) or `MemoryBroker`."""

    @property
    def names(self) -> Names: ...

    async def publish(self, exchange: str, routing_key: str,
                      body: BaseModel | bytes | Mapping[str, Any], *,
                      headers: Mapping[str, Any] | None = None, priority: int | None = None,
                      reply_to: str | None = None, correlation_id: str | None = None,
                      expiration: float | None = None, message_id: str | None = None,
                      mandatory: bool = True, confirm: bool = True) -> None: ...

    async def send_to_queue(self, queue: str, body: BaseModel | bytes | Mapping[str, Any],
                            **kwargs: Any) -> None: ...

    async def consume(self, queue: str, handler: Callable[[Any], Awaitable[None]],
                      prefetch: int) -> str:
        """Start a consumer of `queue`; return its tag."""

    async def cancel(self, tag: str) -> None:
        """Stop the consumer `tag`; the messages it holds are still settled."""

    def in_hand(self, tag: str) -> int:
        """Return how many messages the consumer `tag` holds, not yet acked or nacked."""

    async def stop_consuming(self, grace_s: float,
                             then: Callable[[], None] | None = None) -> None: ...


class Bus:
    """A robust connection with one confirming publish channel and one consume channel."""

    def __init__(self, connection: AbstractRobustConnection, publish_channel: AbstractChannel,
                 names: Names) -> None:
        self.connection = connection
        self.names = names
        self._publish_channel = publish_channel
        self._exchanges: dict[tuple[str, bool], AbstractExchange] = {}
        # Telemetry goes out on a channel without confirms: nobody waits for it (it may be lost).
        self._loose_channel: AbstractChannel | None = None
        self._loose_lock = asyncio.Lock()
        # consumer tag -> its queue and the channel it has to itself
        self._consumers: dict[str, tuple[AbstractQueue, AbstractChannel]] = {}
        self._in_flight: set[asyncio.Task[None]] = set()
        # Messages taken and not yet settled, per consumer tag: the acks of a consumer's
        # messages need its channel, so it closes only when its own count is back to 0.
        self._in_hand: Counter[str] = Counter()
        self._consumer_ids = itertools.count()
        self._closing: set[asyncio.Task[None]] = set()

    @classmethod
    async def connect(cls, amqp_url: str, names: Names, name: str = "agentq") -> Bus:
        """Connect robustly (reconnects and restores consumers by itself)."""
        connection = await aio_pika.connect_robust(amqp_url, client_properties={
            "connection_name": name})
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        return cls(connection, channel, names)

    async def _channel(self, confirm: bool) -> AbstractChannel:
        if confirm:
            return self._publish_channel
        if self._loose_channel is not None and not self._loose_channel.is_closed:
            return self._loose_channel
        async with self._loose_lock:
            if self._loose_channel is None or self._loose_channel.is_closed:
                self._loose_channel = await self.connection.channel(publisher_confirms=False)
                self._exchanges = {k: v for k, v in self._exchanges.items() if k[1]}
            return self._loose_channel

    async def _exchange(self, name: str, confirm: bool = True) -> AbstractExchange:
        channel = await self._channel(confirm)
        if name == "":
            return channel.default_exchange
        exchange = self._exchanges.get((name, confirm))
        if exchange is None:
            exchange = await channel.get_exchange(name, ensure=False)
            self._exchanges[name, confirm] = exchange
        return exchange

    async def publish(self, exchange: str, routing_key: str,
                      body: BaseModel | bytes | Mapping[str, Any], *,
                      headers: Mapping[str, Any] | None = None, priority: int | None = None,
                      reply_to: str | None = None, correlation_id: str | None = None,
                      expiration: float | None = None, message_id: str | None = None,
                      mandatory: bool = True, confirm: bool = True) -> None:
        """Publish persistently and wait for the broker's confirm; `confirm=False`: transient
        and not waited for (telemetry only: the broker may drop it, nothing says so)."""
        mode = aio_pika.DeliveryMode.PERSISTENT if confirm else \
            aio_pika.DeliveryMode.NOT_PERSISTENT
        message = aio_pika.Message(
            encode(body), content_type="application/json", delivery_mode=mode,
            headers=dict(headers or {}), priority=priority, reply_to=reply_to,
            correlation_id=correlation_id, expiration=expiration, message_id=message_id)
        try:
            target = await self._exchange(exchange, confirm)
            await target.publish(message, routing_key, mandatory=mandatory)
        except (aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
            raise PublishFailed(f"publish to {exchange or '(default)'}/{routing_key}: {exc!r}") \
                from None

    async def send_to_queue(self, queue: str, body: BaseModel | bytes | Mapping[str, Any],
                            **kwargs: Any) -> None:
        """Publish straight to a queue through the default exchange."""
        await self.publish("", queue, body, **kwargs)

    async def consume(self, queue: str, handler: Handler, prefetch: int) -> str:
        """Start consuming with manual acks and at most `prefetch` messages in hand; return
        the consumer's tag (for `cancel` and `in_hand`)."""
        channel = await self.connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        # Declared (passively) on the robust channel, not just named: only the queues it
        # declared get their consumers back when the connection is restored (with this tag).
        declared = await channel.declare_queue(queue, passive=True)
        tag = f"agentq-{next(self._consumer_ids)}"
        await declared.consume(functools.partial(self._track, handler, tag), consumer_tag=tag)
        self._consumers[tag] = (declared, channel)
        return tag

    def in_hand(self, tag: str) -> int:
        """Return how many of consumer `tag`'s messages are not yet acked or nacked."""
        return self._in_hand[tag]

    async def cancel(self, tag: str) -> None:
        """Stop the consumer `tag`; its channel closes once the messages it holds are settled
        (their acks need it)."""
        consumer = self._consumers.pop(tag, None)
        if consumer is None:
            return
        declared, channel = consumer
        try:
            await declared.cancel(tag)
        except Exception:  # a closed channel has no consumer left to cancel
            log.debug("cancel of %s failed", tag, exc_info=True)
        closing = asyncio.create_task(self._close_when_settled(tag, channel),
                                      name=f"close-{declared.name}")
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    async def _close_when_settled(self, tag: str, channel: AbstractChannel) -> None:
        # A delivery that raced the cancel starts its handler a loop turn later.
        await asyncio.sleep(0.05)
        while self._in_hand[tag]:
            await asyncio.sleep(0.05)
        self._in_hand.pop(tag, None)
        try:
            await channel.close()
        except Exception:
            log.debug("closing the channel of consumer %s failed", tag, exc_info=True)

    async def _track(self, handler: Handler, tag: str,
                     message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._in_flight.add(task)
        self._in_hand[tag] += 1
        try:
            await self._settle(handler, message)
        finally:
            self._in_flight.discard(task)
            self._in_hand[tag] -= 1

    async def _settle(self, handler: Handler, message: AbstractIncomingMessage) -> None:
        try:
            await handler(message)
        except asyncio.CancelledError:
            await _nack(message)
            raise
        except Exception as exc:
            await self._after(message, exc)
        else:
            await _ack(message)

    async def _after(self, message: AbstractIncomingMessage, exc: Exception) -> None:
        """Settle a message whose handler raised, as `settlement` decides."""
        outcome = settlement(exc, deliveries_before(message.headers) + 1)
        if outcome == "reject":
            await self._park_rejected(message, str(exc))
        elif outcome == "requeue":
            # An outage (database, provider, the broker itself) must not burn through the
            # delivery limit in a fraction of a second: hold the message a moment before
            # giving it back. Not a crash: a message that lived through a few connection
            # losses (each counts as a delivery) is not poison because it cannot publish.
            if isinstance(exc, PublishFailed):
                log.warning("%s; giving the message back", exc)
            await asyncio.sleep(REQUEUE_PAUSE_S)
            await _nack(message)
        elif outcome == "poison":
            # The same message keeps failing its handler: a poison message, not an outage
            # (those raise RequeueMessage). Park it with the reason rather than let the
            # broker dead-letter it, reasonless, at its delivery limit.
            log.error("handler failed on a message from %s %d times; rejecting it",
                      message.routing_key, POISON_AFTER_CRASHES, exc_info=exc)
            await self._park_rejected(message, poison_reason(exc))
        else:
            log.error("handler failed on a message from %s; giving it back",
                      message.routing_key, exc_info=exc)
            await asyncio.sleep(UNEXPECTED_ERROR_PAUSE_S)
            await _nack(message)

    async def _park_rejected(self, message: AbstractIncomingMessage, reason: str) -> None:
        headers = rejected_headers(message.headers, reason, message.exchange,
                                   message.routing_key)
        try:
            await self.publish("", self.names.rejected, message.body, headers=headers,
                               reply_to=message.reply_to, correlation_id=message.correlation_id)
        except PublishFailed:
            log.exception("could not park a rejected message; giving it back")
            await _nack(message)
            return
        await _ack(message)
        log.info("rejected a message from %s: %s", message.routing_key, reason[:200])

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def stop_consuming(self, grace_s: float,
                             then: Callable[[], None] | None = None) -> None:
        """Take no new messages, call `then`, and let the ones in hand finish, for at most
        `grace_s`."""
        for tag, (queue, _) in self._consumers.items():
            try:
                await queue.cancel(tag)
            except Exception:  # a closed channel has no consumer left to cancel
                log.debug("cancel of %s failed", tag, exc_info=True)
        self._consumers.clear()
        if then is not None:
            then()
        deadline = asyncio.get_running_loop().time() + grace_s
        # A delivery that raced the cancel starts its handler a loop turn later, so keep
        # draining until a turn passes with nothing in hand (or the grace runs out).
        while True:
            await asyncio.sleep(0.05)
            pending = set(self._in_flight)
            left = deadline - asyncio.get_running_loop().time()
            if not pending:
                return
            if left <= 0:
                break
            await asyncio.wait(pending, timeout=left)
        for task in pending:  # cancelled handlers nack their messages with requeue
            task.cancel()
        await asyncio.wait(pending, timeout=5)

    async def close(self) -> None:
        for closing in list(self._closing):  # the connection's close takes their channels
            closing.cancel()
        await self.connection.close()
