"""An in-memory broker for handler tests: RabbitMQ's routing and ack rules without a server.

After dramatiq's `StubBroker` and FastStream's `TestRabbitBroker`: exchanges (direct, topic,
headers, fanout), queues and bindings; publish (unroutable mandatory messages fail like
`Bus.publish`); consume with at most `prefetch` in hand, settled by the same `settlement`
rule as `Bus` (ack, park in `rejected`, give back, poison); per-queue and per-message TTLs that
dead-letter to the queue's `x-dead-letter-exchange` under the original routing key (the delay
queues); `x-delivery-count` and `x-delivery-limit` as quorum queues keep them.
`declare_topology` runs unchanged against `MemoryBroker.channel()`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import BaseModel

from services.common.amqp import (
    PublishFailed,
    deliveries_before,
    encode,
    poison_reason,
    rejected_headers,
    settlement,
)
from services.common.topology import Names

log = logging.getLogger(__name__)
MemoryHandler = Callable[[Any], Awaitable[None]]


@dataclass(frozen=True)
class MemoryMessage:
    """A message as a handler or a test reads it (the fields of `IncomingMessage`)."""

    body: bytes
    routing_key: str
    exchange: str
    headers: Mapping[str, Any] = field(default_factory=dict)
    reply_to: str | None = None
    correlation_id: str | None = None
    message_id: str | None = None
    priority: int | None = None
    expiration: float | None = None  # seconds, as `Bus.publish` takes it


@dataclass(frozen=True)
class Binding:
    queue: str
    routing_key: str
    arguments: Mapping[str, Any]


def topic_matches(pattern: str, key: str) -> bool:
    """Match an AMQP topic pattern: `*` is one word, `#` zero or more."""
    def match(p: list[str], k: list[str]) -> bool:
        if not p:
            return not k
        if p[0] == "#":
            return any(match(p[1:], k[i:]) for i in range(len(k) + 1))
        return bool(k) and (p[0] == "*" or p[0] == k[0]) and match(p[1:], k[1:])
    return match(pattern.split("."), key.split(".") if key else [])


def headers_match(arguments: Mapping[str, Any], headers: Mapping[str, Any]) -> bool:
    wanted = {k: v for k, v in arguments.items() if not k.startswith("x-")}
    hits = [k in headers and headers[k] == v for k, v in wanted.items()]
    return any(hits) if arguments.get("x-match") == "any" else all(hits)


@dataclass
class MemoryExchange:
    name: str
    type: str
    bindings: list[Binding] = field(default_factory=list)

    def route(self, message: MemoryMessage) -> list[str]:
        """Return the queues a message published here goes to."""
        def bound(b: Binding) -> bool:
            if self.type == "fanout":
                return True
            if self.type == "topic":
                return topic_matches(b.routing_key, message.routing_key)
            if self.type == "headers":
                return headers_match(b.arguments, message.headers)
            return b.routing_key == message.routing_key
        return list(dict.fromkeys(b.queue for b in self.bindings if bound(b)))


@dataclass
class MemoryQueue:
    name: str
    arguments: Mapping[str, Any]
    ready: deque[MemoryMessage] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def ttl_s(self) -> float | None:
        ttl = self.arguments.get("x-message-ttl")
        return None if ttl is None else float(ttl) / 1000


class _Declared:
    """What `channel.declare_queue` returns: a queue that can be bound."""

    def __init__(self, broker: MemoryBroker, name: str) -> None:
        self._broker, self.name = broker, name

    async def bind(self, exchange: Any, routing_key: str = "",
                   arguments: Mapping[str, Any] | None = None, **_: Any) -> None:
        self._broker.bind(self.name, str(getattr(exchange, "name", exchange)), routing_key,
                          arguments)

    async def unbind(self, exchange: Any, routing_key: str = "", **_: Any) -> None:
        bindings = self._broker.exchanges[str(getattr(exchange, "name", exchange))].bindings
        bindings[:] = [b for b in bindings
                       if (b.queue, b.routing_key) != (self.name, routing_key)]


class _DefaultExchange:
    """A channel's default exchange: publishes straight to the queue named by the key."""

    def __init__(self, broker: MemoryBroker) -> None:
        self._broker = broker

    async def publish(self, message: Any, routing_key: str, **_: Any) -> None:
        await self._broker.publish("", routing_key, bytes(message.body),
                                   headers=dict(message.headers or {}), mandatory=False)


class MemoryChannel:
    """The part of an aio-pika channel that `declare_topology`, `declare_lane` and the lane
    roster use."""

    def __init__(self, broker: MemoryBroker) -> None:
        self._broker = broker
        self.default_exchange = _DefaultExchange(broker)

    async def declare_exchange(self, name: str, type: Any = "direct",
                               **_: Any) -> MemoryExchange:
        return self._broker.declare_exchange(name, str(getattr(type, "value", type)))

    async def declare_queue(self, name: str, arguments: Mapping[str, Any] | None = None,
                            **_: Any) -> _Declared:
        self._broker.declare_queue(name, arguments)
        return _Declared(self._broker, name)

    async def queue_delete(self, name: str) -> None:
        self._broker.queues.pop(name, None)


class MemoryBroker:
    """Exchanges, queues and consumers in this process; see the module docstring."""

    def __init__(self, names: Names, pause_s: float = 0.0) -> None:
        self._names = names
        self.pause_s = pause_s  # how long a message given back waits (Bus: 1 s)
        self.exchanges: dict[str, MemoryExchange] = {}
        self.queues: dict[str, MemoryQueue] = {}
        self._consumers: dict[str, asyncio.Task[None]] = {}  # tag -> the consumer's pump
        self._in_hand: Counter[str] = Counter()  # tag -> messages handed over, not settled
        self._consumer_ids = itertools.count()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._timers: set[asyncio.TimerHandle] = set()

    @property
    def names(self) -> Names:
        return self._names

    # -- topology ----------------------------------------------------------------------------

    def channel(self) -> MemoryChannel:
        return MemoryChannel(self)

    def declare_exchange(self, name: str, type: str = "direct") -> MemoryExchange:
        return self.exchanges.setdefault(name, MemoryExchange(name, type))

    def declare_queue(self, name: str, arguments: Mapping[str, Any] | None = None) -> MemoryQueue:
        return self.queues.setdefault(name, MemoryQueue(name, dict(arguments or {})))

    def bind(self, queue: str, exchange: str, routing_key: str = "",
             arguments: Mapping[str, Any] | None = None) -> None:
        if exchange not in self.exchanges or queue not in self.queues:
            raise KeyError(f"bind {queue} to {exchange}: not declared")
        binding = Binding(queue, routing_key, dict(arguments or {}))
        if binding not in self.exchanges[exchange].bindings:
            self.exchanges[exchange].bindings.append(binding)

    # -- publish -----------------------------------------------------------------------------

    async def publish(self, exchange: str, routing_key: str,
                      body: BaseModel | bytes | Mapping[str, Any], *,
                      headers: Mapping[str, Any] | None = None, priority: int | None = None,
                      reply_to: str | None = None, correlation_id: str | None = None,
                      expiration: float | None = None, message_id: str | None = None,
                      mandatory: bool = True, confirm: bool = True) -> None:
        """Route a message to its queues; unroutable and mandatory fails as `Bus` does
        (`confirm` changes nothing here: every publish is delivered at once)."""
        message = MemoryMessage(encode(body), routing_key, exchange, dict(headers or {}),
                                reply_to, correlation_id, message_id, priority, expiration)
        if exchange and exchange not in self.exchanges:
            raise PublishFailed(f"publish to {exchange}/{routing_key}: no such exchange")
        if not self._deliver(message) and mandatory:
            raise PublishFailed(f"publish to {exchange or '(default)'}/{routing_key}: "
                                "unroutable")

    async def send_to_queue(self, queue: str, body: BaseModel | bytes | Mapping[str, Any],
                            **kwargs: Any) -> None:
        await self.publish("", queue, body, **kwargs)

    def _deliver(self, message: MemoryMessage) -> bool:
        if message.exchange:
            targets = self.exchanges[message.exchange].route(message)
        else:
            targets = [message.routing_key] if message.routing_key in self.queues else []
        for name in targets:
            self._enqueue(self.queues[name], message)
        return bool(targets)

    def _enqueue(self, queue: MemoryQueue, message: MemoryMessage) -> None:
        queue.ready.append(message)
        queue.wake.set()
        ttls = [t for t in (queue.ttl_s, message.expiration) if t is not None]
        if ttls:
            timer = asyncio.get_running_loop().call_later(min(ttls), self._expire, queue,
                                                          message)
            self._timers.add(timer)

    def _expire(self, queue: MemoryQueue, message: MemoryMessage) -> None:
        """Dead-letter an expired message (still waiting) under its own routing key."""
        try:
            queue.ready.remove(message)
        except ValueError:
            return  # taken meanwhile
        self._dead_letter(queue, message)

    def _dead_letter(self, queue: MemoryQueue, message: MemoryMessage) -> None:
        dlx = queue.arguments.get("x-dead-letter-exchange")
        if dlx in self.exchanges:
            self._deliver(replace(message, exchange=str(dlx), expiration=None))

    # -- consume -----------------------------------------------------------------------------

    async def consume(self, queue: str, handler: MemoryHandler, prefetch: int) -> str:
        """Hand `queue`'s messages to `handler`, at most `prefetch` at once; return the
        consumer's tag."""
        if queue not in self.queues:
            raise KeyError(f"consume {queue}: no such queue (declare it first)")
        tag = f"memory-{next(self._consumer_ids)}"
        self._consumers[tag] = asyncio.create_task(
            self._pump(self.queues[queue], handler, asyncio.Semaphore(prefetch), tag),
            name=f"consume-{queue}")
        return tag

    async def cancel(self, tag: str) -> None:
        """Stop the consumer `tag`; the messages it holds are still settled."""
        pump = self._consumers.pop(tag, None)
        if pump is not None:
            pump.cancel()

    def in_hand(self, tag: str) -> int:
        return self._in_hand[tag]

    async def _pump(self, queue: MemoryQueue, handler: MemoryHandler,
                    slots: asyncio.Semaphore, tag: str) -> None:
        while True:
            await slots.acquire()
            while not queue.ready:
                queue.wake.clear()
                await queue.wake.wait()
            message = queue.ready.popleft()
            self._in_hand[tag] += 1
            run = asyncio.create_task(self._settle(queue, handler, message, slots, tag))
            self._in_flight.add(run)
            run.add_done_callback(self._in_flight.discard)

    async def _settle(self, queue: MemoryQueue, handler: MemoryHandler, message: MemoryMessage,
                      slots: asyncio.Semaphore, tag: str) -> None:
        try:
            try:
                await handler(message)
            except asyncio.CancelledError:
                self._give_back(queue, message)
                raise
            except Exception as exc:
                await self._after(queue, message, exc)
        finally:
            self._in_hand[tag] -= 1
            slots.release()

    async def _after(self, queue: MemoryQueue, message: MemoryMessage, exc: Exception) -> None:
        outcome = settlement(exc, deliveries_before(message.headers) + 1)
        if outcome in ("reject", "poison"):
            reason = str(exc) if outcome == "reject" else poison_reason(exc)
            self._deliver(MemoryMessage(
                message.body, self.names.rejected, "",
                rejected_headers(message.headers, reason, message.exchange, message.routing_key),
                message.reply_to, message.correlation_id, message.message_id))
            return
        if outcome == "retry":
            log.error("handler failed on a message from %s; giving it back",
                      message.routing_key, exc_info=exc)
        await asyncio.sleep(self.pause_s)
        self._give_back(queue, message)

    def _give_back(self, queue: MemoryQueue, message: MemoryMessage) -> None:
        """Requeue at the head, counted as a quorum queue does; dead-letter at its limit."""
        count = deliveries_before(message.headers) + 1
        again = replace(message, headers={**message.headers, "x-delivery-count": count})
        limit = queue.arguments.get("x-delivery-limit")
        if isinstance(limit, int) and count > limit:
            self._dead_letter(queue, again)
            return
        queue.ready.appendleft(again)
        queue.wake.set()

    # -- tests and shutdown ------------------------------------------------------------------

    def messages(self, queue: str) -> list[MemoryMessage]:
        """Return what waits in `queue`, oldest first, leaving it there."""
        return list(self.queues[queue].ready)

    def get(self, queue: str) -> MemoryMessage | None:
        """Take the oldest waiting message of `queue` (auto-ack), or None."""
        ready = self.queues[queue].ready
        return ready.popleft() if ready else None

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def stop_consuming(self, grace_s: float,
                             then: Callable[[], None] | None = None) -> None:
        """Take no new messages, call `then`, let those in hand finish within `grace_s`."""
        for pump in self._consumers.values():
            pump.cancel()
        self._consumers.clear()
        if then is not None:
            then()
        pending = set(self._in_flight)
        if pending:
            _, late = await asyncio.wait(pending, timeout=grace_s)
            for run in late:
                run.cancel()
            if late:
                await asyncio.wait(late, timeout=5)

    async def close(self) -> None:
        await self.stop_consuming(grace_s=0)
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

