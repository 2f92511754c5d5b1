"""Keep a worker consuming the awake lanes of its tiers.

`LaneWatcher` polls the lane registry (one cheap round trip) and, when a lane was created or
woke, or every `resync_s` to notice lanes gone idle, reads it whole and applies
services.lanes.plans.plan: it starts consuming new and woken lanes and lets go of idle ones
it holds nothing of, through the process's `LaneState`. `repeat` runs it (and the sweep) in
the background.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aio_pika.abc import AbstractChannel
from aio_pika.exceptions import AMQPError

from services.common.redis_extras import REDIS_DOWN
from services.common.topology import declare_lane
from services.lanes.plans import Lane, plan, refresh_s
from services.lanes.registry import LaneRegistry
from services.lanes.state import LaneState

log = logging.getLogger(__name__)
WATCH_INTERVAL_S = 0.25
_OUTAGE = (*REDIS_DOWN, AMQPError)


class LaneWatcher:
    """Start consuming lanes as they appear or wake; stop consuming them once idle.

    Each lane is declared on `channel` (a lane registered before its queue was declared) and
    consumed from the state's broker into `handler`, `prefetch` messages at most.
    """

    def __init__(self, registry: LaneRegistry, tiers: Iterable[str], lanes: LaneState,
                 channel: AbstractChannel, handler: Callable[[Any], Awaitable[None]],
                 prefetch: int, resync_s: float | None = None) -> None:
        self.registry = registry
        self.tiers = list(tiers)
        self.lanes = lanes
        self.channel = channel
        self.handler = handler
        self.prefetch = prefetch
        # at most this late a worker stops consuming a lane gone idle
        self.resync_s = refresh_s(registry.idle_s) if resync_s is None else resync_s
        self._version: tuple[int, ...] | None = None
        self._next_resync = 0.0

    async def poll(self) -> None:
        """Look once; the registry is read whole only when it changed or a resync is due."""
        version = await self.registry.version(self.tiers)
        now = time.monotonic()
        if version == self._version and now < self._next_resync:
            return
        view = await self.registry.view(self.tiers)
        consumed = self.lanes.consumed
        todo = plan(view, consumed, {lane: self.lanes.in_hand(lane) for lane in consumed},
                    self.registry.idle_s)
        failed: list[tuple[Lane, BaseException]] = []
        for lane, action in ([(lane, self.start) for lane in todo.start]
                             + [(lane, self.stop) for lane in todo.stop]):
            try:  # one lane that fails must not hold up the others
                await action(lane)
            except Exception as exc:
                failed.append((lane, exc))
        if failed:  # tried again at the next poll
            first, error = failed[0]
            raise LaneFailed(f"{len(failed)} lane(s) failed, first {first[1]} in {first[0]}: "
                             f"{error!r}") from error
        self._version = version
        self._next_resync = now + self.resync_s

    async def start(self, lane: Lane) -> None:
        await declare_lane(self.channel, self.registry.names, *lane)
        await self.lanes.consume(lane, self.handler, self.prefetch)
        log.info("consuming the lane of %s in %s", lane[1], lane[0])

    async def stop(self, lane: Lane) -> None:
        await self.lanes.let_go(lane)
        log.info("the lane of %s in %s is idle; no longer consumed", lane[1], lane[0])


class LaneFailed(Exception):
    """Starting or stopping some lanes failed; the others were handled."""


async def repeat(action: Callable[[], Awaitable[object]], interval_s: float,
                 stop: asyncio.Event, what: str) -> None:
    """Run `action` every `interval_s` until `stop`; a failure is logged once and tried again
    (the lanes already consumed stay consumed), never ends the loop."""
    warned = False
    while not stop.is_set():
        try:
            await action()
            warned = False
        except (*_OUTAGE, LaneFailed) as exc:
            if not warned:
                log.warning("%s failed (%r); trying again every %.2f s", what, exc, interval_s)
                warned = True
        except Exception:
            if not warned:
                log.exception("%s failed; trying again every %.2f s", what, interval_s)
                warned = True
        try:
            await asyncio.wait_for(stop.wait(), interval_s)
        except TimeoutError:
            pass
