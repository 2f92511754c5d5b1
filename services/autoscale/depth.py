"""Sample work-queue depth: ready and unacknowledged messages, and how fast their sum grows.

Ready counts come from passive declares (always available). Unacknowledged counts come from
the management API when it answers within a second (services.common.queue_depth); otherwise
they are estimated from the consumers' prefetch windows and the in-flight counts the workers
report in their heartbeats.

The queues are listed anew at every sample (`DepthProbe` takes a list or an async function
that returns one): tenant lanes appear while the autoscaler runs.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aio_pika.abc import AbstractConnection

from services.common.queue_depth import QueueDepths

QueueList = Callable[[], Awaitable[list[str]]]


@dataclass(frozen=True)
class Depth:
    """The state of the queues one pool of workers consumes."""

    ready: int
    unacked: int
    consumers: int  # the most any one queue has: each worker consumes every queue of its tiers
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


class DepthProbe:
    """Read the depth of a set of queues; keep a short history for the growth rate.

    `queues` is a fixed list, or an async function that lists them at each sample (the
    autoscaler's: every tier queue and every registered lane, `WorkQueues.flat`).
    """

    def __init__(self, connection: AbstractConnection, amqp_url: str,
                 queues: list[str] | QueueList, prefetch: int, management: str | None,
                 window_s: float = 30.0) -> None:
        self._queues = queues
        self.prefetch = prefetch
        self.window_s = window_s
        self.history: deque[tuple[float, int]] = deque()
        self._depths = QueueDepths(connection, amqp_url, management)

    async def sample(self, reported_in_flight: int | None) -> Depth:
        """Return the queues' depth now and add it to the history."""
        queues = self._queues if isinstance(self._queues, list) else await self._queues()
        readings = await self._depths.read(queues)
        ready = sum(r.ready for r in readings)
        consumers = max((r.consumers for r in readings), default=0)
        known = [r.unacked for r in readings if r.unacked is not None]
        if readings and len(known) == len(readings):
            depth = Depth(ready, sum(known), consumers, "management")
        else:
            unacked = estimate_unacked([(r.ready, r.consumers) for r in readings],
                                       self.prefetch, reported_in_flight)
            depth = Depth(ready, unacked, consumers, "estimate")
        now = time.monotonic()
        self.history.append((now, depth.total))
        while self.history and self.history[0][0] < now - self.window_s:
            self.history.popleft()
        return depth

    def growth_per_min(self) -> float:
        return growth_per_min(list(self.history))
