"""The broker drops a service's connection (a restart, a failover, an operator's close): the
connection comes back, and so does every consumer on it. Against the real RabbitMQ, whose own
`rabbitmqctl close_connection` does the dropping."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Callable
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from services.common.amqp import Bus
from services.common.settings import Settings
from services.common.topology import Names, declare_topology
from tests.conftest import Rabbit


def _close_connection(name: str) -> None:
    """Close, from the broker's side, the connection whose client called itself `name`."""
    listing = subprocess.run(["rabbitmqctl", "list_connections", "-q", "pid", "client_properties"],
                             capture_output=True, text=True, stdin=subprocess.DEVNULL,
                             check=True).stdout
    pids = [line.split("\t", 1)[0] for line in listing.splitlines()
            if f'{{"connection_name","{name}"}}' in line]
    assert len(pids) == 1, listing
    subprocess.run(["rabbitmqctl", "close_connection", pids[0], "closed by a test"],
                   capture_output=True, stdin=subprocess.DEVNULL, check=True)


def test_consumers_come_back_when_the_broker_drops_the_connection(
        namespace: str, eventually: Callable[..., Any]) -> None:
    names = Names(namespace)
    url = Settings(namespace=namespace).amqp_url
    name = f"reconnect-{uuid.uuid4().hex[:8]}"
    queue = names.work_queue("cheap")
    rabbit = Rabbit(url)

    async def scenario() -> list[bytes]:
        bus = await Bus.connect(url, names, name=name)
        try:
            await declare_topology(await bus.connection.channel(), names)
            got: asyncio.Queue[bytes] = asyncio.Queue()

            async def handle(message: AbstractIncomingMessage) -> None:
                await got.put(message.body)

            await bus.consume(queue, handle, prefetch=5)
            rabbit.publish(names.work, "cheap", b"before")
            bodies = [await asyncio.wait_for(got.get(), 10)]
            _close_connection(name)
            await asyncio.sleep(0.5)
            rabbit.publish(names.work, "cheap", b"after")  # waits in the queue meanwhile
            bodies.append(await asyncio.wait_for(got.get(), 30))
            await asyncio.sleep(0.3)  # its ack
            return bodies
        finally:
            await bus.close()

    try:
        assert asyncio.run(scenario()) == [b"before", b"after"]
        # Acked once back. The broker drops a closed connection's consumers a moment after its
        # close-ok, so the count is polled; a consumer left over would stay at 1.
        assert eventually(lambda: rabbit.depth(queue) == (0, 0), timeout=10)
    finally:
        rabbit.close()
