"""The sweep: a namespace-wide job that one worker at a time runs every `refresh_s`.

It reads idle lanes' depths and wakes any that hold messages (a task that reached an idle
lane without a publisher recording it), gives lanes registered without a time one, retires
lanes long idle that hold nothing (their queues are deleted), and registers again the lanes
that the broker's roster names but Redis forgot (services.lanes.roster).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import Protocol

from aio_pika.abc import AbstractConnection

from services.common.queue_depth import read_passive
from services.lanes.plans import Lane, refresh_s, sweep_plan
from services.lanes.registry import RETIRE_WITHIN_S, LaneRegistry

log = logging.getLogger(__name__)
# registered lanes -> lanes the broker knows that hold tasks but are not among them
StrandedFinder = Callable[[Collection[Lane]], Awaitable[list[Lane]]]


class LaneQueues(Protocol):
    """What the sweep asks of the broker about lane queues."""

    async def depths(self, queues: list[str]) -> dict[str, tuple[int, int]]:
        """Return (ready messages, consumers) of those of `queues` that exist."""

    async def delete(self, queue: str) -> None: ...


class BrokerQueues:
    """Lane queues read and deleted on a RabbitMQ connection, each on a channel of its own
    (a failed passive declare or delete closes its channel, not a shared one)."""

    def __init__(self, connection: AbstractConnection) -> None:
        self.connection = connection

    async def depths(self, queues: list[str]) -> dict[str, tuple[int, int]]:
        return {r.queue: (r.ready, r.consumers)
                for r in await read_passive(self.connection, queues)}

    async def delete(self, queue: str) -> None:
        channel = await self.connection.channel()
        try:
            await channel.queue_delete(queue)
        finally:
            await channel.close()


class LaneSweeper:
    """Wake idle lanes that hold messages, retire the long idle ones that hold nothing, and
    give lanes registered without a time one."""

    def __init__(self, registry: LaneRegistry, tiers: Iterable[str], queues: LaneQueues,
                 owner: str, stranded: StrandedFinder | None = None) -> None:
        self.registry = registry
        self.tiers = list(tiers)
        self.queues = queues
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
        depths = await self.queues.depths([names.lane_queue(*lane) for lane in todo.check])
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
                reading = (await self.queues.depths([queue])).get(queue)
                if reading == (0, 0):
                    sent = True
                    await self.queues.delete(queue)
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
