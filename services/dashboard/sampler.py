"""Read every queue's depth and consumer count: passive declares, plus the management API
when it answers (it adds unacknowledged counts; without it the readings are still complete).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import urllib.request
from urllib.parse import quote, unquote, urlparse

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from services.dashboard.writer import QueueReading

log = logging.getLogger(__name__)
MANAGEMENT_TIMEOUT_S = 1.0
MANAGEMENT_RETRY_S = 60.0  # after a failure, do not pay the timeout on every round


def management_url(amqp_url: str, port: int = 15672) -> str:
    """Return the management API base URL on the broker's host."""
    host = urlparse(amqp_url).hostname or "localhost"
    return f"http://{host}:{port}"


def _credentials(amqp_url: str) -> tuple[str, str, str]:
    parsed = urlparse(amqp_url)
    vhost = unquote(parsed.path[1:]) if len(parsed.path) > 1 else "/"
    return unquote(parsed.username or "guest"), unquote(parsed.password or "guest"), vhost


def fetch_management(base_url: str, amqp_url: str) -> dict[str, dict[str, int]]:
    """Return {queue: {ready, unacked, consumers}} from the management API (blocking)."""
    user, password, vhost = _credentials(amqp_url)
    url = (f"{base_url.rstrip('/')}/api/queues/{quote(vhost, safe='')}"
           "?columns=name,messages_ready,messages_unacknowledged,consumers")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
    with urllib.request.urlopen(request, timeout=MANAGEMENT_TIMEOUT_S) as response:
        rows = json.loads(response.read())
    return {row["name"]: {"ready": int(row.get("messages_ready") or 0),
                          "unacked": int(row.get("messages_unacknowledged") or 0),
                          "consumers": int(row.get("consumers") or 0)} for row in rows}


class QueueSampler:
    """Sample a fixed list of queues on an open connection."""

    def __init__(self, connection: AbstractRobustConnection, amqp_url: str, queues: list[str],
                 management: str | None) -> None:
        self._connection = connection
        self._amqp_url = amqp_url
        self._queues = queues
        self._management = management or None
        self._management_retry_at = 0.0

    async def sample(self) -> list[QueueReading]:
        """Return one reading per existing queue (a missing queue is skipped)."""
        readings = await self._passive()
        extra = await self._richer()
        if not extra:
            return readings
        return [QueueReading(r.queue, r.depth, r.consumers, extra[r.queue]["unacked"],
                             "management") if r.queue in extra else r for r in readings]

    async def _passive(self) -> list[QueueReading]:
        readings: list[QueueReading] = []
        channel: AbstractChannel | None = None
        try:
            for name in self._queues:
                if channel is None or channel.is_closed:
                    channel = await self._connection.channel()
                try:
                    queue = await channel.declare_queue(name, passive=True)
                except aio_pika.exceptions.AMQPError:
                    channel = None  # a missing queue closes the channel: open another
                    continue
                result = queue.declaration_result
                readings.append(QueueReading(name, int(result.message_count),
                                             int(result.consumer_count)))
        finally:
            if channel is not None and not channel.is_closed:
                await channel.close()
        return readings

    async def _richer(self) -> dict[str, dict[str, int]]:
        if self._management is None or time.monotonic() < self._management_retry_at:
            return {}
        try:
            return await asyncio.to_thread(fetch_management, self._management, self._amqp_url)
        except Exception as exc:  # any HTTP, JSON or network fault: degrade to passive only
            log.debug("management API unavailable (%s); using passive declares only", exc)
            self._management_retry_at = time.monotonic() + MANAGEMENT_RETRY_S
            return {}
