"""Read every queue's depth and consumer count for the dashboard (services.common.queue_depth:
passive declares, plus the management API's unacknowledged counts when it answers).
"""

from __future__ import annotations

from aio_pika.abc import AbstractConnection

from services.common.queue_depth import QueueDepths
from services.dashboard.writer import QueueReading


class QueueSampler:
    """Sample a fixed list of queues on an open connection."""

    def __init__(self, connection: AbstractConnection, amqp_url: str, queues: list[str],
                 management: str | None) -> None:
        self._queues = queues
        self._depths = QueueDepths(connection, amqp_url, management)

    async def sample(self) -> list[QueueReading]:
        """Return one reading per existing queue (a missing queue is skipped)."""
        return [QueueReading(d.queue, d.ready, d.consumers, d.unacked, d.source)
                for d in await self._depths.read(self._queues)]
