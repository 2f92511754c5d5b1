"""Keep a worker consuming the awake lanes of its tiers, and wake idle lanes that hold work.

`LaneWatcher` polls the lane registry (one cheap round trip) and, when a lane was created or
woke, or every `resync_s` to notice lanes gone idle, reads it whole and applies
services.common.lane_idle.plan. `LaneSweeper` is a namespace-wide job that one worker at a
time runs: it reads idle lanes' depths and wakes any that hold messages, and registers
again the lanes that the broker's roster names but Redis forgot (services.common.lane_roster).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterable

from aio_pika.exceptions import AMQPError

from services.common.lane_idle import Lane, plan, sweep_plan
from services.common.lanes import RETIRE_WITHIN_S, LaneRegistry, refresh_s
from services.common.redis_extras import REDIS_DOWN

log = logging.getLogger(__name__)
WATCH_INTERVAL_S = 0.25

LaneAction = Callable[[str, str], Awaitable[None]]
# queue names -> (ready messages, consumers) of those that exist
DepthReader = Callable[[list[str]], Awaitable[dict[str, tuple[int, int]]]]
QueueDeleter = Callable[[str], Awaitable[None]]
# registered lanes -> lanes the broker knows that hold tasks but are not among them
StrandedFinder = Callable[[Collection[Lane]], Awaitable[list[Lane]]]
_OUTAGE = (*REDIS_DOWN, AMQPError)


class LaneWatcher:
    """Start consuming lanes as they appear or wake; stop consuming them once idle."""

    def __init__(self, registry: LaneRegistry, tiers: Iterable[str], on_start: LaneAction,
                 on_stop: LaneAction, in_hand: Callable[[Lane], int],
                 resync_s: float | None = None) -> None:
        self.registry = registry
        self.tiers = list(tiers)
        self.on_start = on_start
        self.on_stop = on_stop
        self.in_hand = in_hand
        # at most this late a worker stops consuming a lane gone idle
        self.resync_s = refresh_s(registry.idle_s) if resync_s is None else resync_s
        self.consumed: set[Lane] = set()
        self._version: tuple[int, ...] | None = None
        self._next_resync = 0.0

    async def poll(self) -> None:
        """Look once; the registry is read whole only when it changed or a resync is due."""
        version = await self.registry.version(self.tiers)
        now = time.monotonic()
        if version == self._version and now < self._next_resync:
            return
        view = await self.registry.view(self.tiers)
        todo = plan(view, self.consumed, {lane: self.in_hand(lane) for lane in self.consumed},
                    self.registry.idle_s)
        failed: list[tuple[Lane, BaseException]] = []
        for lane, action, done in ([(lane, self.on_start, self.consumed.add)
                                    for lane in todo.start]
                                   + [(lane, self.on_stop, self.consumed.discard)
                                      for lane in todo.stop]):
            try:  # one lane that fails must not hold up the others
                await action(*lane)
            except Exception as exc:
                failed.append((lane, exc))
            else:
                done(lane)
        if failed:  # tried again at the next poll
            first, error = failed[0]
            raise LaneFailed(f"{len(failed)} lane(s) failed, first {first[1]} in {first[0]}: "
                             f"{error!r}") from error
        self._version = version
        self._next_resync = now + self.resync_s


class LaneFailed(Exception):
    """Starting or stopping some lanes failed; the others were handled."""


class LaneSweeper:
    """Wake idle lanes that hold messages, retire the long idle ones that hold nothing, and
    give lanes registered without a time one."""

    def __init__(self, registry: LaneRegistry, tiers: Iterable[str], depths: DepthReader,
                 delete: QueueDeleter, owner: str,
                 stranded: StrandedFinder | None = None) -> None:
        self.registry = registry
        self.tiers = list(tiers)
        self.depths = depths
        self.delete = delete
        self.owner = owner
        self.stranded = stranded
        # at most this late a task that reached an idle lane unannounced is served
        self.every_s = refresh_s(registry.idle_s)

    async def sweep(self) -> list[Lane]:
        """Sweep if no other worker did within `every_s`; return the lanes woken."""
        if not await self.registry.claim("sweep", self.owner, self.every_s):
            return []
        return await self.sweep_now()

    async def sweep_now(self) -> list[Lane]:
        view = await self.registry.view(self.tiers)
        todo = sweep_plan(view, self.registry.idle_s, self.registry.retire_s)
        for lane in todo.adopt:
            await self.registry.touch(*lane)
        names = self.registry.names
        depths = await self.depths([names.lane_queue(*lane) for lane in todo.check])
        woken = [lane for lane in todo.check
                 if depths.get(names.lane_queue(*lane), (0, 0))[0] > 0]
        for lane in woken:
            log.info("idle lane of %s in %s holds %d tasks: waking it", lane[1], lane[0],
                     depths[names.lane_queue(*lane)][0])
            await self.registry.touch(*lane)
        for lane in todo.retire:
            if lane not in woken:
                await self.retire(*lane)
        if self.stranded is not None:
            # Last: the registry's own lanes are swept even if the broker's list can't be read.
            for lane in await self.stranded(set(view.seen)):
                log.warning("the lane of %s in %s holds tasks but is not registered (Redis "
                            "lost it?): registering it", lane[1], lane[0])
                await self.registry.touch(*lane)
                woken.append(lane)
        return woken

    async def retire(self, tier: str, tenant: str) -> bool:
        """Delete a long idle lane's queue if it holds nothing; return whether it did.

        Marked as being retired first: publishers then send the tenant's work to the tier's
        queue, so nothing can arrive between the check and the delete, as long as the mark
        lasts (the check and the delete must end well within it). A queue not read (an error,
        or missing) is kept; a consumer still counted holds messages unacked: kept too.
        """
        token = await self.registry.begin_retiring(tier, tenant)
        if token is None:
            return False  # used since, or another sweeper has it
        queue = self.registry.names.lane_queue(tier, tenant)
        deleted = sent = False
        try:
            async with asyncio.timeout(RETIRE_WITHIN_S):
                reading = (await self.depths([queue])).get(queue)
                if reading == (0, 0):
                    sent = True
                    await self.delete(queue)
                    deleted = True
        except TimeoutError:
            log.warning("retiring the lane of %s in %s timed out", tenant, tier)
        finally:
            # A delete sent but not confirmed may still land: count it as done, and let the
            # mark run out so that no publisher sends to the queue before it has.
            await self.registry.end_retiring(tier, tenant, token, deleted or sent,
                                             keep_mark=sent and not deleted)
        if deleted:
            log.info("lane of %s in %s idle for %.0f s: its queue is deleted", tenant, tier,
                     self.registry.retire_s)
        return deleted


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
