"""A handler that cannot publish (the broker is going away under it) is in an outage, not
holding a poison message: the message is given back as often as it takes, never parked in
`rejected`. Quorum queues count every return towards x-delivery-count, connection losses
too, so a task that lived through a few of them must not be taken for poison."""

from __future__ import annotations

import asyncio

import pika
import pytest
from aio_pika.abc import AbstractIncomingMessage

from services.common import amqp
from services.common.amqp import Bus, PublishFailed
from services.common.topology import Names, declare_topology
from tests.faults.servers import OwnRabbit


def test_a_handler_that_cannot_publish_gives_the_message_back(
        own_rabbit: OwnRabbit, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(amqp, "REQUEUE_PAUSE_S", 0.02)
    monkeypatch.setattr(amqp, "UNEXPECTED_ERROR_PAUSE_S", 0.02)
    names = Names("faults_outage")
    failures = amqp.POISON_AFTER_CRASHES + 2
    seen: list[int] = []

    async def scenario() -> None:
        bus = await Bus.connect(own_rabbit.url, names, name="outage-not-poison")
        try:
            await declare_topology(await bus.connection.channel(), names)
            done = asyncio.Event()

            async def handle(message: AbstractIncomingMessage) -> None:
                seen.append(amqp.deliveries_before(message.headers))
                if len(seen) <= failures:
                    raise PublishFailed("publish to results: the channel is closed")
                done.set()

            await bus.consume(names.work_queue("cheap"), handle, prefetch=1)
            await bus.publish(names.work, "cheap", {"id": "t1", "prompt": "x"})
            await asyncio.wait_for(done.wait(), 30)
            await asyncio.sleep(0.2)  # its ack
        finally:
            await bus.close()

    asyncio.run(scenario())
    connection = pika.BlockingConnection(pika.URLParameters(own_rabbit.url))
    try:
        channel = connection.channel()
        rejected = channel.queue_declare(names.rejected, passive=True).method.message_count
        left = channel.queue_declare(names.work_queue("cheap"), passive=True) \
            .method.message_count
    finally:
        connection.close()
    assert len(seen) == failures + 1 and seen[-1] == failures
    assert (rejected, left) == (0, 0)
