"""Read queues' depths by passive declares: what AMQP itself can tell, no management API."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import aio_pika
from aio_pika.abc import AbstractConnection
from aio_pika.exceptions import AMQPError, ChannelNotFoundEntity

log = logging.getLogger(__name__)


async def passive_depths(connection: AbstractConnection,
                         queues: Iterable[str]) -> dict[str, tuple[int, int] | None]:
    """Return each queue's (ready messages, consumers); None where the broker says the queue
    does not exist; a queue whose reading failed otherwise is left out (unknown).

    A plain (non-robust) channel: a robust one answers a repeated passive declare from its
    cache. A failed declare closes the channel, so the next queue gets a new one.
    """
    readings: dict[str, tuple[int, int] | None] = {}
    channel: aio_pika.Channel | None = None
    try:
        for name in queues:
            if channel is None or channel.is_closed:
                channel = aio_pika.Channel(connection, publisher_confirms=False)
                await channel.initialize()
            try:
                declared = await channel.declare_queue(name, passive=True)
            except ChannelNotFoundEntity:
                readings[name] = None
                continue
            except AMQPError as exc:
                log.debug("passive declare of %s failed: %r", name, exc)
                continue
            result = declared.declaration_result
            readings[name] = (int(result.message_count or 0), int(result.consumer_count or 0))
    finally:
        if channel is not None and not channel.is_closed:
            await channel.close()
    return readings
