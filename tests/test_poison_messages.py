"""A message its handler keeps failing on is parked in `rejected` with the error, not
dead-lettered without a reason after twenty crash-loop redeliveries."""

from __future__ import annotations

import asyncio

import pytest
from aio_pika.abc import AbstractIncomingMessage

from services.common import amqp
from services.common.amqp import Bus, deliveries_before
from services.common.settings import Settings
from services.common.topology import ERROR_HEADER, Names, declare_topology
from tests.conftest import Rabbit


def test_deliveries_before_reads_the_quorum_count() -> None:
    assert deliveries_before(None) == 0
    assert deliveries_before({"x-delivery-count": 3}) == 3
    assert deliveries_before({"x-delivery-count": "3"}) == 0  # not the broker's: ignored


def test_a_message_that_keeps_crashing_its_handler_is_rejected_with_the_reason(
        namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(amqp, "UNEXPECTED_ERROR_PAUSE_S", 0.05)
    names = Names(namespace)
    url = Settings(namespace=namespace).amqp_url
    rabbit = Rabbit(url)
    attempts: list[bytes] = []

    async def scenario() -> None:
        bus = await Bus.connect(url, names, name=f"{namespace}-poison")
        try:
            await declare_topology(await bus.connection.channel(), names)

            async def handle(message: AbstractIncomingMessage) -> None:
                attempts.append(message.body)
                if message.body == b"poison":
                    raise KeyError("a field the handler did not expect")

            await bus.consume(names.work_queue("cheap"), handle, prefetch=5)
            rabbit.publish(names.work, "cheap", b"poison")
            rabbit.publish(names.work, "cheap", b"fine")
            for _ in range(200):
                if rabbit.count(names.rejected):
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)
        finally:
            await bus.close()

    try:
        asyncio.run(scenario())
        parked = rabbit.get(names.rejected)
        assert parked.body == b"poison"
        assert parked.headers[ERROR_HEADER] == (
            f"handler failed {amqp.POISON_AFTER_CRASHES} times: KeyError: "
            "'a field the handler did not expect'")
        assert attempts.count(b"poison") == amqp.POISON_AFTER_CRASHES
        assert attempts.count(b"fine") == 1
        assert rabbit.count(names.dead) == 0
        assert rabbit.count(names.work_queue("cheap")) == 0
    finally:
        rabbit.close()
