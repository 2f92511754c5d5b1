"""Sample work-queue depth: ready and unacknowledged messages, and how fast their sum grows.

Ready counts come from a passive declare (always available). Unacknowledged counts come from
the management API when it answers within a second; otherwise they are estimated from the
consumers' prefetch windows and the in-flight counts the workers report in their heartbeats.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlparse

import aiohttp
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from aio_pika.exceptions import AMQPError

log = logging.getLogger(__name__)
MANAGEMENT_TIMEOUT_S = 1.0
MANAGEMENT_RETRY_S = 30.0  # after a failure, do not stall every sample on a dead endpoint


@dataclass(frozen=True)
class Depth:
    """The state of the queues one pool of workers consumes."""

    ready: int
    unacked: int
    consumers: int
    source: str  # "management" or "estimate"

    @property
    def total(self) -> int:
        return self.ready + self.unacked


def estimate_unacked(queues: list[tuple[int, int]], prefetch: int,
                     reported_in_flight: int | None) -> int:
    """Estimate unacknowledged messages from (ready, consumers) per queue, without the API.

    While a queue has messages waiting, each of its consumers' prefetch windows is full. The
    windows of queues with none waiting are only an upper bound: the workers' own in-flight
    reports (heartbeats), less the full windows, are the better figure there.
    """
    window = max(0, prefetch)
    full = sum(max(0, c) * window for ready, c in queues if ready > 0)
    idle = sum(max(0, c) * window for ready, c in queues if ready <= 0)
    if reported_in_flight is None:
        return full + idle
    return full + min(idle, max(0, reported_in_flight - full))


def growth_per_min(samples: list[tuple[float, int]]) -> float:
    """Return the least-squares slope of (seconds, depth) samples, per minute (0 if too few)."""
    if len(samples) < 2:
        return 0.0
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_d = sum(d for _, d in samples) / n
    spread = sum((t - mean_t) ** 2 for t, _ in samples)
    if spread <= 0:
        return 0.0
    slope = sum((t - mean_t) * (d - mean_d) for t, d in samples) / spread
    return slope * 60


def management_url(amqp_url: str, port: int = 15672) -> str:
    """Return the management API base URL on the broker's host, credentials included."""
    url = urlparse(amqp_url)
    user = quote(unquote(url.username or "guest"), safe="")
    password = quote(unquote(url.password or "guest"), safe="")
    return f"http://{user}:{password}@{url.hostname or 'localhost'}:{port}"


def vhost_of(amqp_url: str) -> str:
    path = urlparse(amqp_url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


class DepthProbe:
    """Read the depth of a set of queues; keep a short history for the growth rate."""

    def __init__(self, connection: AbstractRobustConnection, queues: list[str], prefetch: int,
                 management: str | None, vhost: str = "/", window_s: float = 30.0) -> None:
        self.connection = connection
        self.queues = queues
        self.prefetch = prefetch
        self.management = management
        self.vhost = vhost
        self.window_s = window_s
        self.history: deque[tuple[float, int]] = deque()
        self._channel: AbstractRobustChannel | None = None
        self._management_down_until = 0.0
        self._http: aiohttp.ClientSession | None = None

    async def sample(self, reported_in_flight: int | None) -> Depth:
        """Return the queues' depth now and add it to the history."""
        depth = await self._from_management() or await self._from_declare(reported_in_flight)
        now = time.monotonic()
        self.history.append((now, depth.total))
        while self.history and self.history[0][0] < now - self.window_s:
            self.history.popleft()
        return depth

    def growth_per_min(self) -> float:
        return growth_per_min(list(self.history))

    async def _from_declare(self, reported_in_flight: int | None) -> Depth:
        if self._channel is None or self._channel.is_closed:
            self._channel = await self._open()
        counts: list[tuple[int, int]] = []
        for name in self.queues:
            try:
                # Not robust: a robust channel answers repeated passive declares from a cache.
                declared = await self._channel.declare_queue(name, passive=True, robust=False)
            except AMQPError as exc:  # a missing queue closes the channel; it holds nothing
                log.debug("passive declare of %s failed: %r", name, exc)
                self._channel = await self._open()
                continue
            result = declared.declaration_result
            counts.append((result.message_count or 0, result.consumer_count or 0))
        unacked = estimate_unacked(counts, self.prefetch, reported_in_flight)
        return Depth(sum(r for r, _ in counts), unacked, sum(c for _, c in counts), "estimate")

    async def _open(self) -> AbstractRobustChannel:
        channel = await self.connection.channel()
        assert isinstance(channel, AbstractRobustChannel)
        return channel

    async def _from_management(self) -> Depth | None:
        if not self.management or time.monotonic() < self._management_down_until:
            return None
        url = urlparse(self.management)
        base = f"{url.scheme}://{url.hostname}:{url.port or 15672}"
        auth = aiohttp.BasicAuth(unquote(url.username or "guest"),
                                 unquote(url.password or "guest"))
        if self._http is None:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=MANAGEMENT_TIMEOUT_S))
        ready = unacked = consumers = 0
        try:
            for name in self.queues:
                path = f"/api/queues/{quote(self.vhost, safe='')}/{quote(name, safe='')}"
                async with self._http.get(base + path, auth=auth) as response:
                    if response.status == 404:
                        continue
                    response.raise_for_status()
                    doc = await response.json()
                ready += int(doc.get("messages_ready") or 0)
                unacked += int(doc.get("messages_unacknowledged") or 0)
                consumers += int(doc.get("consumers") or 0)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.info("management API unavailable (%r); estimating unacked messages", exc)
            self._management_down_until = time.monotonic() + MANAGEMENT_RETRY_S
            return None
        return Depth(ready, unacked, consumers, "management")

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()
