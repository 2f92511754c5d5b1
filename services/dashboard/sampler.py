"""Read every queue's depth and consumer count for the dashboard (services.common.queue_depth:
passive declares, plus the management API's unacknowledged counts when it answers).

A tier's work sits in its own queue and in one lane per tenant; the dashboard shows the tier as
one row, named after the tier's queue, that counts them all (a row per tenant lane would bury
the pipeline's other queues under hundreds of rows).
"""

from __future__ import annotations

from aio_pika.abc import AbstractConnection

from services.common.queue_depth import QueueDepths, WorkQueues, tier_totals
from services.dashboard.writer import QueueReading


class QueueSampler:
    """Sample a fixed list of queues on an open connection; with `work`, every tier's queue
    reads as the sum over it and the tier's lanes."""

    def __init__(self, connection: AbstractConnection, amqp_url: str, queues: list[str],
                 management: str | None, work: WorkQueues | None = None) -> None:
        self._queues = queues
        self._work = work
        self._depths = QueueDepths(connection, amqp_url, management)

    async def sample(self) -> list[QueueReading]:
        """Return one reading per existing queue (a missing queue is skipped), each tier's
        work queues folded into one."""
        listing = await self._work.read() if self._work is not None else {}
        work = [queue for queues in listing.values() for queue in queues]
        depths = await self._depths.read(list(dict.fromkeys([*self._queues, *work])))
        if self._work is not None:
            grouped = set(work)
            depths = [d for d in depths if d.queue not in grouped] + list(
                tier_totals(depths, listing, self._work.names).values())
        return [QueueReading(d.queue, d.ready, d.consumers, d.unacked, d.source)
                for d in depths]
