"""Start-up in one place: every client a service needs, built once, closed in reverse order.

`open_clients(settings, service)` is an async context manager over an `AsyncExitStack`
(arq's `on_startup` ctx, in spirit): a service asks it for the clients it uses (`bus()`,
`redis()`, `engine()`), each built on first use and closed when the block ends, the last
built first. Redis clients all share ONE timeout policy (below); a service that wants its
calls to fail faster than that bounds them itself (the limiter's `asyncio.timeout`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TypeVar

import redis
from redis.asyncio import Redis
from sqlalchemy.engine import Engine

from services.common import events
from services.common.amqp import Bus
from services.common.settings import Settings
from services.common.store import make_engine
from services.common.topology import Names

T = TypeVar("T")

# The one Redis timeout policy. A refused connection fails at once whatever these are; they
# bound a hung Redis (accepting, not answering), so that an outage is seen in seconds: a
# cache step is skipped (`Extras.attempt`), a lane listing keeps its last answer, a sampling
# tick or an autoscaler tick goes on.
REDIS_SOCKET_TIMEOUT_S = 2.0
REDIS_CONNECT_TIMEOUT_S = 2.0


def redis_client(url: str) -> Redis:
    """Return a Redis client with the timeout policy every agentq service uses."""
    return Redis.from_url(url, socket_timeout=REDIS_SOCKET_TIMEOUT_S,
                          socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S)


def sync_redis_client(url: str) -> redis.Redis:
    """Return a blocking Redis client (Flask pages) with the same timeout policy."""
    return redis.Redis.from_url(url, socket_timeout=REDIS_SOCKET_TIMEOUT_S,
                                socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S)


class Clients:
    """The clients of one running service, each made on first use and closed at the end."""

    def __init__(self, settings: Settings, service: str, stack: AsyncExitStack) -> None:
        self.settings = settings
        self.names = Names(settings.namespace)
        self._service = service
        self._stack = stack
        self._bus: Bus | None = None
        self._redis: Redis | None = None
        self._engine: Engine | None = None

    async def bus(self) -> Bus:
        """Return the AMQP bus (connected now if not yet; a failure raises and is not kept)."""
        if self._bus is None:
            bus = await Bus.connect(self.settings.amqp_url, self.names, name=self._service)
            self._stack.push_async_callback(bus.close)
            self._bus = bus
        return self._bus

    def redis(self) -> Redis:
        """Return the service's Redis client (caches, ledgers, lane registry)."""
        if self._redis is None:
            self._redis = redis_client(self.settings.redis_url)
            self._stack.push_async_callback(self._redis.aclose)
        return self._redis

    async def engine(self, make: Callable[[str], Engine] = make_engine) -> Engine:
        """Return the SQL engine of AGENTQ_DATABASE_URL (`make` may also create tables)."""
        if self._engine is None:
            engine = await asyncio.to_thread(make, self.settings.database_url)
            self._stack.callback(engine.dispose)
            self._engine = engine
        return self._engine

    def closing(self, close: Callable[[], Awaitable[object]]) -> None:
        """Close something else the service built (an embedder, a pool) with the clients."""
        self._stack.push_async_callback(close)


@asynccontextmanager
async def open_clients(settings: Settings, service: str) -> AsyncIterator[Clients]:
    """Yield the service's Clients; close every one built, last first, when the block ends."""
    if settings.strict_events:  # never turns off what a test turned on
        events.set_strict(True)
    async with AsyncExitStack() as stack:
        yield Clients(settings, service, stack)
