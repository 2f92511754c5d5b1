"""The broker's own list of tenant lanes, so that losing Redis strands no lane's tasks.

The lane registry lives in Redis (services.lanes.registry.LaneRegistry), and workers consume
only the lanes it lists. Redis restarted without its data, restarted workers would never
consume a lane that still holds tasks. So whoever declares a lane also appends an entry to a
durable queue, `<ns>.lanes` (the roster): one persistent message per lane, on the broker
that holds the lane itself. AMQP cannot list queues, but it can read a queue: the sweep
(services.lanes.sweeper.LaneSweeper) reads every entry without acknowledging it, checks the
lanes the registry has forgotten, wakes those that hold messages, and lets the channel's
close put the entries back. Duplicates (a lane declared again after a restart) and entries
whose queue was deleted (a retired lane) are acknowledged, which removes them.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Collection, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from pydantic import BaseModel, ValidationError

from services.common.passive_declare import passive_depths
from services.common.topology import ROSTER_ARGUMENTS, Names
from services.lanes.plans import Lane

log = logging.getLogger(__name__)
# Read at most this many entries a sweep: a roster far longer is mostly duplicates, which
# each sweep removes, so the next one reads further.
READ_AT_MOST = 20_000


class RosterEntry(BaseModel):
    tier: str
    tenant: str


@dataclass(frozen=True)
class Compaction:
    keep: list[Lane]  # one entry each, left in the roster
    drop: list[int]  # positions of entries to remove: duplicates, unreadable, lanes gone


def compact(entries: list[Lane | None], exists: Mapping[Lane, bool]) -> Compaction:
    """Decide which roster entries stay.

    entries: the lanes read, in roster order (None for an entry that could not be parsed);
    exists: what the broker said of each lane's queue (a lane missing from it was not
    asked, or the answer was unclear, and is kept).
    """
    keep: list[Lane] = []
    drop: list[int] = []
    seen: set[Lane] = set()
    for position, lane in enumerate(entries):
        if lane is None or lane in seen or exists.get(lane) is False:
            drop.append(position)
            continue
        seen.add(lane)
        keep.append(lane)
    return Compaction(keep, drop)


class LaneRoster:
    """Append to and read the roster queue of one namespace."""

    def __init__(self, names: Names) -> None:
        self.names = names

    async def declare(self, channel: AbstractChannel) -> None:
        await channel.declare_queue(self.names.lane_roster, durable=True,
                                    arguments=ROSTER_ARGUMENTS)

    async def announce(self, channel: AbstractChannel, tier: str, tenant: str) -> None:
        """Append the lane (a persistent message, confirmed if the channel confirms)."""
        body = RosterEntry(tier=tier, tenant=tenant).model_dump_json().encode()
        await channel.default_exchange.publish(
            aio_pika.Message(body, content_type="application/json",
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=self.names.lane_roster)

    @asynccontextmanager
    async def reading(self, connection: AbstractConnection,
                      at_most: int = READ_AT_MOST) -> AsyncIterator[RosterRead]:
        """Hold the roster's entries for the body of the `with`; on leaving, entries not
        dropped go back to the queue (the channel closes with them unacknowledged)."""
        channel = aio_pika.Channel(connection, publisher_confirms=False)
        await channel.initialize()
        try:
            queue = await channel.declare_queue(self.names.lane_roster, durable=True,
                                                arguments=ROSTER_ARGUMENTS)
            messages: list[AbstractIncomingMessage] = []
            count = min(at_most, int(queue.declaration_result.message_count or 0))
            while len(messages) < count:
                message = await queue.get(no_ack=False, fail=False)
                if message is None:
                    break
                messages.append(message)
            yield RosterRead(messages)
        finally:
            if not channel.is_closed:
                await channel.close()


class RosterRead:
    """Entries held unacknowledged: the lanes they name, and a way to drop some."""

    def __init__(self, messages: list[AbstractIncomingMessage]) -> None:
        self.messages = messages
        self.entries: list[Lane | None] = [_lane(m) for m in messages]

    @property
    def lanes(self) -> set[Lane]:
        return {lane for lane in self.entries if lane is not None}

    async def drop(self, positions: Iterable[int]) -> None:
        for position in positions:
            await self.messages[position].ack()


def _lane(message: AbstractIncomingMessage) -> Lane | None:
    try:
        entry = RosterEntry.model_validate_json(message.body)
    except ValidationError:
        log.warning("unreadable lane roster entry dropped: %r", message.body[:200])
        return None
    return entry.tier, entry.tenant


class RosterSweep:
    """Find, from the roster, lanes of `tiers` that the registry does not list but that hold
    tasks; tidy the roster on the way."""

    def __init__(self, connection: AbstractConnection, names: Names,
                 tiers: Iterable[str]) -> None:
        self.connection = connection
        self.roster = LaneRoster(names)
        self.names = names
        self.tiers = set(tiers)

    async def stranded(self, registered: Collection[Lane]) -> list[Lane]:
        async with self.roster.reading(self.connection) as read:
            unlisted = sorted(lane for lane in read.lanes
                              if lane[0] in self.tiers and lane not in registered)
            depths = await lane_depths(self.connection, self.names, unlisted)
            plan = compact(read.entries, {lane: depths[lane] is not None for lane in depths})
            await read.drop(plan.drop)
        return [lane for lane in unlisted if (depth := depths.get(lane)) and depth[0] > 0]


async def lane_depths(connection: AbstractConnection, names: Names,
                      lanes: Iterable[Lane]) -> dict[Lane, tuple[int, int] | None]:
    """Return each lane's (ready, consumers), None where the broker says its queue does not
    exist; a lane whose reading failed otherwise is left out (unknown)."""
    queues = {names.lane_queue(*lane): lane for lane in lanes}
    return {queues[queue]: depth
            for queue, depth in (await passive_depths(connection, queues)).items()}


async def roster_lanes(connection: AbstractConnection, names: Names) -> set[Lane]:
    """Return every lane the roster names, leaving it as it was (tests, `delete_namespace`)."""
    async with LaneRoster(names).reading(connection) as read:
        return read.lanes
