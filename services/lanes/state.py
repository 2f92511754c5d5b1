"""The one owner of a process's lane state: what it registered, what it consumes, in hand.

A publisher remembers when it last registered each lane (so that it touches the registry at
most every `refresh_s`) and which lanes it entered in the roster; a worker consumes lanes
through consumers of its broker, and may stop one only once none of its messages is in
hand. All of it lives here, and only here: the broker knows consumers by tag, not lanes;
the registry and the roster are the namespace's record, not this process's.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

from services.common.amqp import Broker
from services.lanes.plans import Lane


class LaneState:
    """The lanes this process registered and announced (as a publisher) and consumes (as a
    worker, from `broker`; None in a process that only publishes to lanes)."""

    def __init__(self, broker: Broker | None = None) -> None:
        self.broker = broker
        self._registered: dict[Lane, float] = {}  # lane -> time.monotonic() of registration
        self._announced: set[Lane] = set()  # entered in the roster by this process
        self._consumers: dict[Lane, str] = {}  # lane -> tag of the consumer taking it

    # -- as a publisher ------------------------------------------------------------------

    def registered_at(self, lane: Lane) -> float:
        """Return when this process last registered `lane` (monotonic; -inf: never)."""
        return self._registered.get(lane, -math.inf)

    def registered(self, lane: Lane, at: float) -> None:
        self._registered[lane] = at

    def forget(self, lane: Lane) -> None:
        """Register the lane again before its next use (its queue went away)."""
        self._registered.pop(lane, None)

    def announced(self, lane: Lane) -> bool:
        return lane in self._announced

    def mark_announced(self, lane: Lane) -> None:
        self._announced.add(lane)

    @property
    def announced_any(self) -> bool:
        return bool(self._announced)

    # -- as a consumer -------------------------------------------------------------------

    @property
    def consumed(self) -> set[Lane]:
        return set(self._consumers)

    def in_hand(self, lane: Lane) -> int:
        """Return how many of `lane`'s messages this process holds, not yet settled."""
        tag = self._consumers.get(lane)
        return 0 if tag is None or self.broker is None else self.broker.in_hand(tag)

    async def consume(self, lane: Lane, handler: Callable[[Any], Awaitable[None]],
                      prefetch: int) -> None:
        """Start consuming the lane's queue (declared already), unless this process does."""
        if lane in self._consumers:
            return
        if self.broker is None:
            raise RuntimeError("this process only publishes to lanes: it has no broker to "
                               "consume them from")
        self._consumers[lane] = await self.broker.consume(
            self.broker.names.lane_queue(*lane), handler, prefetch)

    async def let_go(self, lane: Lane) -> None:
        """Stop consuming the lane; the messages in hand are still settled."""
        tag = self._consumers.pop(lane, None)
        if tag is not None and self.broker is not None:
            await self.broker.cancel(tag)
