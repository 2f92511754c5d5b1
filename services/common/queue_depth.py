"""Read RabbitMQ queue depths: passive declares give ready messages and consumers (always,
and fresh), the management API adds unacknowledged counts when it answers in time.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from dataclasses import dataclass, replace
from urllib.parse import quote, unquote, urlparse

import aio_pika
import aiohttp
from aio_pika.abc import AbstractConnection
from aio_pika.exceptions import AMQPError

log = logging.getLogger(__name__)
MANAGEMENT_PORT = 15672
MANAGEMENT_TIMEOUT_S = 1.0
MANAGEMENT_RETRY_S = 30.0  # after a failure, do not pay the timeout on every read


@dataclass(frozen=True)
class QueueDepth:
    """One queue as read just now."""

    queue: str
    ready: int
    unacked: int | None  # None: unknown (no management API)
    consumers: int
    source: str = "amqp"  # "amqp" (passive declare) or "management" (unacked from the API)


def management_url(amqp_url: str, port: int = MANAGEMENT_PORT) -> str:
    """Return the management API's base URL on the broker's host (no credentials in it)."""
    host = urlparse(amqp_url).hostname or "localhost"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def credentials(url: str) -> tuple[str, str]:
    """Return the (user, password) of a URL; RabbitMQ's guest/guest where it has none."""
    parsed = urlparse(url)
    return unquote(parsed.username or "guest"), unquote(parsed.password or "guest")


def vhost_of(amqp_url: str) -> str:
    """Return the virtual host an AMQP URL names ("/" when it names none)."""
    path = urlparse(amqp_url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def queues_request(management: str, amqp_url: str) -> tuple[str, str, str]:
    """Return (URL, user, password) of the one request that lists the vhost's queues.

    Credentials written into `management` win; otherwise the AMQP URL's are used.
    """
    parsed = urlparse(management)
    user, password = credentials(management if parsed.username else amqp_url)
    base = parsed._replace(netloc=parsed.netloc.rpartition("@")[2]).geturl().rstrip("/")
    vhost = quote(vhost_of(amqp_url), safe="")
    return f"{base}/api/queues/{vhost}?columns=name,messages_unacknowledged", user, password


async def read_passive(connection: AbstractConnection, queues: list[str]) -> list[QueueDepth]:
    """Passively declare each queue on a plain (non-robust) channel; skip missing ones.

    A robust channel answers a repeated passive declare from its cache, so it is not used.
    """
    readings: list[QueueDepth] = []
    channel: aio_pika.Channel | None = None
    try:
        for name in queues:
            if channel is None or channel.is_closed:
                channel = aio_pika.Channel(connection, publisher_confirms=False)
                await channel.initialize()
            try:
                declared = await channel.declare_queue(name, passive=True)
            except AMQPError as exc:  # a missing queue closes the channel: open another
                log.debug("passive declare of %s failed: %r", name, exc)
                continue
            result = declared.declaration_result
            readings.append(QueueDepth(name, int(result.message_count or 0), None,
                                       int(result.consumer_count or 0)))
    finally:
        if channel is not None and not channel.is_closed:
            await channel.close()
    return readings


class QueueDepths:
    """Read queues on an open connection, with the management API at `management` if any."""

    def __init__(self, connection: AbstractConnection, amqp_url: str, management: str | None,
                 timeout_s: float = MANAGEMENT_TIMEOUT_S,
                 retry_s: float = MANAGEMENT_RETRY_S) -> None:
        self.connection = connection
        self._request = queues_request(management, amqp_url) if management else None
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self._retry_at = 0.0

    async def read(self, queues: list[str]) -> list[QueueDepth]:
        """Return one reading per existing queue, with unacked counts when the API answers."""
        readings, unacked = await asyncio.gather(read_passive(self.connection, queues),
                                                 self.unacked())
        if unacked is None:
            return readings
        return [replace(r, unacked=unacked[r.queue], source="management")
                if r.queue in unacked else r for r in readings]

    async def unacked(self) -> dict[str, int] | None:
        """Return {queue: unacked} from one management API request; None when unavailable."""
        if self._request is None or time.monotonic() < self._retry_at:
            return None
        url, user, password = self._request
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        try:
            async with aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as http, \
                    http.get(url, headers={"Authorization": f"Basic {token}"}) as response:
                response.raise_for_status()
                rows = await response.json()
            return {row["name"]: int(row["messages_unacknowledged"]) for row in rows
                    if "messages_unacknowledged" in row}  # absent until the stats arrive
        except Exception as exc:  # any HTTP, JSON or network fault: unacked stays unknown
            log.info("management API unavailable (%r); retrying in %.0f s", exc, self.retry_s)
            self._retry_at = time.monotonic() + self.retry_s
            return None
