"""A connection lost while a handler runs takes its channel: the message can no longer be
acked or nacked there, and the broker gives it back by itself. Settling it must not raise
out of the consumer (an ERROR traceback per message on every broker blip), and the message
comes back once the connection is restored."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aio_pika.abc import AbstractIncomingMessage

from services.common.amqp import Bus
from services.common.topology import Names, declare_topology
from tests.faults.servers import OwnRabbit


def test_a_message_whose_channel_closed_under_its_handler_comes_back_quietly(
        own_rabbit: OwnRabbit, caplog: pytest.LogCaptureFixture) -> None:
    names = Names("faults_settle")
    deliveries: list[bool] = []

    async def scenario() -> None:
        bus = await Bus.connect(own_rabbit.url, names, name="settle-closed-channel")
        try:
            await declare_topology(await bus.connection.channel(), names)
            started, release, again = asyncio.Event(), asyncio.Event(), asyncio.Event()

            async def handle(message: AbstractIncomingMessage) -> None:
                deliveries.append(bool(message.redelivered))
                if len(deliveries) == 1:
                    started.set()
                    await release.wait()  # the connection goes meanwhile
                else:
                    again.set()

            await bus.consume(names.work_queue("cheap"), handle, prefetch=1)
            await bus.publish(names.work, "cheap", {"id": "t1", "prompt": "x"})
            await asyncio.wait_for(started.wait(), 10)
            await asyncio.to_thread(own_rabbit.close_all_connections)
            await asyncio.sleep(0.5)
            release.set()
            await asyncio.wait_for(again.wait(), 30)
            await asyncio.sleep(0.3)
        finally:
            await bus.close()

    with caplog.at_level(logging.ERROR):
        asyncio.run(scenario())
    assert deliveries == [False, True]
    callback_errors = [r for r in caplog.records if "Consumer callback failed" in str(r.msg)]
    assert not callback_errors
