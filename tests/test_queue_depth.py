"""services.common.queue_depth: the pure URL helpers, and reads against the real RabbitMQ in a
namespace of their own (`agentq_test_<uuid8>`, declared and deleted here)."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from bench.stack import free_port
from services.autoscale.depth import Depth, DepthProbe
from services.common.queue_depth import (
    QueueDepth,
    QueueDepths,
    credentials,
    management_url,
    queues_request,
    vhost_of,
)
from services.common.settings import Settings
from services.common.topology import (
    SUBMIT_ROUTING_KEY,
    Names,
    declare_topology,
    delete_topology,
)

AMQP_URL = Settings().amqp_url
COLUMNS = "?columns=name,messages_unacknowledged"


@pytest.mark.parametrize(("amqp_url", "expected"), [
    ("amqp://u:p%40ss@rabbit:5672/vh", "http://rabbit:15672"),  # no credentials in it
    ("amqp://localhost", "http://localhost:15672"),
    ("amqp://", "http://localhost:15672"),
    ("amqp://guest:guest@[::1]:5672/", "http://[::1]:15672"),
])
def test_management_url_is_on_the_broker_host(amqp_url: str, expected: str) -> None:
    assert management_url(amqp_url) == expected
    assert management_url("amqp://rabbit/", port=8080) == "http://rabbit:8080"


@pytest.mark.parametrize(("amqp_url", "user", "password", "vhost"), [
    ("amqp://u:p%40ss@rabbit:5672/vh", "u", "p@ss", "vh"),
    ("amqp://rabbit", "guest", "guest", "/"),
    ("amqp://rabbit/", "guest", "guest", "/"),
    ("amqp://rabbit/%2F", "guest", "guest", "/"),
    ("amqp://rabbit/a%2Fb", "guest", "guest", "a/b"),
])
def test_credentials_and_vhost(amqp_url: str, user: str, password: str, vhost: str) -> None:
    assert credentials(amqp_url) == (user, password)
    assert vhost_of(amqp_url) == vhost


def test_queues_request_lists_the_vhost_with_the_right_credentials() -> None:
    assert queues_request("http://rabbit:15672/", "amqp://u:p%40ss@rabbit/a%2Fb") == (
        f"http://rabbit:15672/api/queues/a%2Fb{COLUMNS}", "u", "p@ss")
    # Credentials written into the management URL win over the broker's.
    assert queues_request("http://m:x%3Ay@rabbit:15672/proxy", "amqp://u:p@rabbit") == (
        f"http://rabbit:15672/proxy/api/queues/%2F{COLUMNS}", "m", "x:y")


# --- against the real broker ----------------------------------------------------------------

async def _on_channel(action: Callable[[AbstractChannel, Names], Awaitable[None]],
                      names: Names) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        await action(await connection.channel(), names)


@pytest.fixture
def names() -> Iterator[Names]:
    names = Names(f"agentq_test_{uuid.uuid4().hex[:8]}")
    asyncio.run(_on_channel(declare_topology, names))
    try:
        yield names
    finally:
        asyncio.run(_on_channel(delete_topology, names))


async def _publish_tasks(connection: AbstractRobustConnection, names: Names, count: int) -> None:
    channel = await connection.channel()  # publisher confirms: counted once this returns
    exchange = await channel.get_exchange(names.tasks)
    for n in range(count):
        await exchange.publish(aio_pika.Message(f'{{"n": {n}}}'.encode()), SUBMIT_ROUTING_KEY)
    await channel.close()


async def _ignore(message: AbstractIncomingMessage) -> None:
    pass


def test_passive_read_sees_messages_and_consumers_fresh_every_time(names: Names) -> None:
    cheap = names.work_queue("cheap")

    async def scenario() -> tuple[list[QueueDepth], list[QueueDepth]]:
        connection = await aio_pika.connect_robust(AMQP_URL)  # robust, as the services use
        async with connection:
            await _publish_tasks(connection, names, 3)
            consumer = await connection.channel()
            await (await consumer.get_queue(cheap)).consume(_ignore)
            depths = QueueDepths(connection, AMQP_URL, None)
            first = await depths.read([names.tasks, f"{names.ns}.missing", cheap])
            await _publish_tasks(connection, names, 2)
            return first, await depths.read([names.tasks, cheap])

    first, second = asyncio.run(scenario())
    assert first == [QueueDepth(names.tasks, 3, None, 0), QueueDepth(cheap, 0, None, 1)]
    assert second == [QueueDepth(names.tasks, 5, None, 0), QueueDepth(cheap, 0, None, 1)]


class _Silent:
    """A port that accepts connections and never answers."""

    def __enter__(self) -> str:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


@pytest.mark.parametrize("endpoint", ["closed", "silent"])
def test_unreachable_management_api_degrades_to_passive_only(names: Names,
                                                             endpoint: str) -> None:
    timeout_s = 0.5

    async def scenario(url: str) -> tuple[list[QueueDepth], float, float]:
        connection = await aio_pika.connect_robust(AMQP_URL)
        async with connection:
            await _publish_tasks(connection, names, 2)
            depths = QueueDepths(connection, AMQP_URL, url, timeout_s=timeout_s)
            started = time.monotonic()
            readings = await depths.read([names.tasks])
            first_s = time.monotonic() - started
            started = time.monotonic()
            assert await depths.read([names.tasks]) == readings
            return readings, first_s, time.monotonic() - started  # backing off: no request

    if endpoint == "closed":
        readings, first_s, again_s = asyncio.run(scenario(f"http://127.0.0.1:{free_port()}"))
    else:
        with _Silent() as url:
            readings, first_s, again_s = asyncio.run(scenario(url))
    assert readings == [QueueDepth(names.tasks, 2, None, 0, "amqp")]
    assert first_s < timeout_s + 0.25, first_s
    assert again_s < 0.25, again_s


class _Management(BaseHTTPRequestHandler):
    rows: list[dict[str, Any]] = []
    seen: list[tuple[str, str | None]] = []

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        _Management.seen.append((self.path, self.headers.get("Authorization")))
        body = json.dumps(self.rows).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_management_api_adds_unacked_counts_in_one_request(names: Names) -> None:
    cheap = names.work_queue("cheap")
    _Management.rows = [{"name": names.tasks, "messages_unacknowledged": 4},
                        {"name": cheap, "messages_unacknowledged": 1},
                        {"name": "someone.else", "messages_unacknowledged": 9}]
    _Management.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Management)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"

    async def scenario() -> tuple[list[QueueDepth], Depth]:
        connection = await aio_pika.connect_robust(AMQP_URL)
        async with connection:
            await _publish_tasks(connection, names, 3)
            readings = await QueueDepths(connection, AMQP_URL, url).read([names.tasks, cheap])
            probe = DepthProbe(connection, AMQP_URL, [names.tasks, cheap], 8, url)
            return readings, await probe.sample(reported_in_flight=None)

    try:
        readings, depth = asyncio.run(scenario())
    finally:
        server.shutdown()
        server.server_close()
    assert readings == [QueueDepth(names.tasks, 3, 4, 0, "management"),
                        QueueDepth(cheap, 0, 1, 0, "management")]
    assert depth == Depth(ready=3, unacked=5, consumers=0, source="management")
    path, auth = _Management.seen[0]
    vhost = quote(vhost_of(AMQP_URL), safe="")
    assert len(_Management.seen) == 2 and path == f"/api/queues/{vhost}{COLUMNS}"  # one a read
    user, password = credentials(AMQP_URL)
    assert auth == "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
