"""Shared fixtures: each test gets its own namespace on the real RabbitMQ, Redis and database.

A missing broker, cache or database fails the run rather than skipping tests. Set
`AGENTQ_TEST_DATABASE_URL=postgresql://root@127.0.0.1/test` to run against PostgreSQL: each
test then works in its own schema, dropped at the end.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest

from bench.stack import ScratchDatabase, delete_namespace, wait_until
from services.common.settings import Settings
from services.common.topology import Names, declare

POLL_INTERVAL_S = 0.05


@pytest.fixture
def namespace(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Yield a fresh namespace; delete its exchanges, queues and Redis keys afterwards."""
    ns = f"agentq_test_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("AGENTQ_NAMESPACE", ns)  # for code and subprocesses that read the env
    yield ns
    base = Settings(namespace=ns)
    delete_namespace(base.amqp_url, base.redis_url, ns)


@pytest.fixture
def database_url(namespace: str, tmp_path: Path) -> Iterator[str]:
    """Yield a private results-store URL: SQLite in tmp_path, or a PostgreSQL schema."""
    database = ScratchDatabase(namespace, tmp_path)
    try:
        yield database.url
    finally:
        database.drop()


@pytest.fixture
def settings(namespace: str, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Return Settings for the test's namespace and database (broker URLs from the env)."""
    monkeypatch.setenv("AGENTQ_DATABASE_URL", database_url)
    monkeypatch.delenv("AGENTQ_API_KEYS", raising=False)  # tests that want keys set them
    return Settings(namespace=namespace, database_url=database_url, api_keys="")


@dataclass(frozen=True)
class Delivery:
    """A message read back from a queue."""

    properties: pika.BasicProperties
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def headers(self) -> dict[str, Any]:
        return dict(self.properties.headers or {})


class Rabbit:
    """A blocking pika client for tests: publish, read back with a deadline, inspect queues."""

    def __init__(self, amqp_url: str) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        self._channel = self._open_channel()

    def _open_channel(self) -> Any:
        channel = self.connection.channel()
        channel.confirm_delivery()
        return channel

    def publish(self, exchange: str, routing_key: str, body: bytes | str,
                mandatory: bool = True, **properties: Any) -> None:
        """Publish and wait for the confirm (mandatory: fail if nothing is bound)."""
        properties.setdefault("content_type", "application/json")
        payload = body.encode() if isinstance(body, str) else body
        self._channel.basic_publish(exchange, routing_key, payload,
                                    pika.BasicProperties(**properties), mandatory=mandatory)

    def get(self, queue: str, timeout: float = 10.0) -> Delivery:
        """Take the next message of `queue`, waiting up to `timeout` seconds for one."""
        deadline = time.monotonic() + timeout
        while True:
            method, properties, body = self._channel.basic_get(queue, auto_ack=True)
            if method is not None:
                return Delivery(properties, body)
            if time.monotonic() > deadline:
                raise AssertionError(f"no message arrived in {queue} within {timeout}s")
            self.connection.sleep(POLL_INTERVAL_S)

    def depth(self, queue: str) -> tuple[int, int] | None:
        """Return (ready messages, consumers) of a queue, or None if it does not exist."""
        try:
            ok = self._channel.queue_declare(queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker:  # 404 closes the channel: open another
            self._channel = self._open_channel()
            return None
        return ok.method.message_count, ok.method.consumer_count

    def count(self, queue: str) -> int:
        """Return how many messages are ready in an existing queue."""
        depth = self.depth(queue)
        assert depth is not None, f"queue {queue} does not exist"
        return depth[0]

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()


@pytest.fixture
def names(namespace: str) -> Names:
    """The test namespace's names, its topology declared (the namespace fixture deletes it)."""
    names = Names(namespace)
    asyncio.run(declare(Settings(namespace=namespace).amqp_url, names))
    return names


@pytest.fixture
def rabbit(settings: Settings) -> Iterator[Rabbit]:
    """Yield a pika helper connected to the test broker."""
    client = Rabbit(settings.amqp_url)
    yield client
    client.close()


@pytest.fixture
def eventually() -> Callable[..., Any]:
    """Return a poller: `eventually(check, timeout=10)` gives check()'s first truthy value."""

    def poll(check: Callable[[], Any], timeout: float = 10.0) -> Any:
        return wait_until(check, timeout, getattr(check, "__name__", "a condition"),
                          interval=POLL_INTERVAL_S)

    return poll


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses the results database, so `make test-postgres` runs it."""
    for item in items:
        if "database_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.database)
