"""Where a publisher sends a tenant's work: its lane, declared and registered on first use.

The router publishes every routed task through `LaneDirectory.publish`; a worker escalates
a task to the next tier's lane the same way, and sends retries and budget holds back to the
lane through a delay queue (`publish_later`). While the registry or the broker cannot
register a lane, or while it is being retired, the work goes to the tier's own queue.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from aio_pika.abc import AbstractChannel
from aio_pika.exceptions import AMQPError
from pydantic import BaseModel
from redis.exceptions import RedisError

from services.common.amqp import Broker, PublishFailed
from services.common.models import Task
from services.common.topology import DELAY_HEADER, declare_lane, lane_route, retry_level
from services.lanes.plans import can_name_a_queue, refresh_s
from services.lanes.registry import LaneRegistry
from services.lanes.roster import LaneRoster
from services.lanes.state import LaneState

log = logging.getLogger(__name__)


class LaneDirectory:
    """Say where to publish a tenant's work: its lane, declared and registered on first use."""

    def __init__(self, channel: AbstractChannel, registry: LaneRegistry,
                 state: LaneState | None = None) -> None:
        self.channel = channel
        self.registry = registry
        self.roster = LaneRoster(registry.names)
        # What this process registered and announced; a worker shares it with its watcher.
        self.state = state or LaneState()

    async def route(self, tier: str, tenant: str) -> str:
        """Return the routing key for `tenant`'s work in `tier`: its lane, or the tier's queue
        while the lane cannot be declared and registered, or is being retired."""
        registered = self.state.registered_at((tier, tenant))
        if time.monotonic() - registered < refresh_s(self.registry.idle_s):
            return lane_route(tier, tenant)
        return await self._register(tier, tenant, 0.0)

    async def reserve(self, tier: str, tenant: str, ahead_s: float) -> str:
        """Return where to send work that reaches its lane only in `ahead_s` (a retry, a
        budget hold): the lane, with its use recorded then so that it is not retired before;
        the tier's queue if that cannot be recorded."""
        return await self._register(tier, tenant, ahead_s)

    async def _register(self, tier: str, tenant: str, ahead_s: float) -> str:
        if not can_name_a_queue(self.registry.names.lane_queue(tier, tenant)):
            return tier  # a tenant `\w` admits that AMQP does not (é, 漢): the tier's queue
        key = (tier, tenant)
        now = time.monotonic()
        registered = self.state.registered_at(key)
        try:
            touched = await self.registry.touch(tier, tenant, ahead_s)
            if touched == "busy":  # its queue is being deleted: the tier's queue takes the work
                return tier
            # Every registration declares (idempotent, once per refresh_s): work that lands
            # later (a retry) is dead-lettered to the lane, dropped if its queue were missing.
            await declare_lane(self.channel, self.registry.names, tier, tenant)
            if touched == "new" or not self.state.announced(key):
                await self._announce(tier, tenant)
        except (RedisError, AMQPError, OSError, RuntimeError) as exc:
            # Registered lately, so not retired since (that takes retire_s of disuse).
            if not ahead_s and now - registered < self.registry.retire_s / 2:
                return lane_route(tier, tenant)
            log.warning("lane %s/%s not ready (%r): publishing to the tier's queue",
                        tier, tenant, exc)
            return tier
        self.state.registered(key, now)
        return lane_route(tier, tenant)

    async def _announce(self, tier: str, tenant: str) -> None:
        # The roster is how a lane is found once Redis has forgotten it; a lane it misses is
        # announced at its next registration, so this failing must not hold up the task.
        try:
            if not self.state.announced_any:  # declared (idempotent) until one entry is in
                await self.roster.declare(self.channel)
            await self.roster.announce(self.channel, tier, tenant)
        except (AMQPError, OSError, RuntimeError) as exc:
            log.warning("lane %s/%s not entered in the roster (%r): tried again later", tier,
                        tenant, exc)
            return
        self.state.mark_announced((tier, tenant))

    def forget(self, tier: str, tenant: str) -> None:
        """Declare and register the lane again before its next use (its queue went away)."""
        self.state.forget((tier, tenant))

    async def publish(self, bus: Broker, tier: str, tenant: str, body: BaseModel,
                      **kwargs: Any) -> None:
        """Publish work for `tenant` in `tier` to its lane; to the tier's queue if the lane's
        queue turned out to be gone (deleted under a stale registration)."""
        route = await self.route(tier, tenant)
        try:
            await bus.publish(bus.names.work, route, body, **kwargs)
        except PublishFailed:
            if route == tier:
                raise
            self.forget(tier, tenant)
            log.warning("lane %s/%s unroutable: publishing to the tier's queue", tier, tenant)
            await bus.publish(bus.names.work, tier, body, **kwargs)

    async def publish_later(self, bus: Broker, tier: str, task: Task, headers: dict[str, Any],
                            delay_ms: float) -> None:
        """Send a task back to the tail of its lane after about `delay_ms` (a retry, a budget
        hold), through the delay queue of that length; the lane's use is recorded for when
        the task lands back, so that the lane is not retired meanwhile."""
        level = retry_level(delay_ms)
        wait_ms = max(1.0, min(delay_ms, level))
        route = await self.reserve(tier, task.tenant, wait_ms / 1000)
        await bus.publish(bus.names.retry, route, task, priority=task.priority,
                          message_id=task.id, headers={**headers, DELAY_HEADER: level},
                          expiration=wait_ms / 1000)
