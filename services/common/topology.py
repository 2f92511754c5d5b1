"""Name and declare every exchange and queue of agentq, idempotently."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractRobustChannel, ExchangeType

from services.common.models import TIERS

# Retries wait in one holding queue per delay level; a message's own expiration is at most its
# level, so a long delay at the head of a queue never holds up a shorter one for long.
RETRY_LEVELS_MS: tuple[int, ...] = (250, 500, 1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000)
DELIVERY_LIMIT = 20  # a message redelivered this often (crash loop) is dead-lettered
TELEMETRY_MAX_LENGTH = 1_000_000  # telemetry queues drop their oldest rather than grow forever
# The event types the dashboard's collector folds into rollups (`dashboard/rollup.py`
# `fold_event`; a test keeps the two in step): its queue gets only these, so the per-task
# `task.started` and `task.completed` cost it no delivery it would throw away.
DASHBOARD_EVENTS: tuple[str, ...] = ("task.routed", "task.retry", "task.dead", "cache.verify",
                                     "limiter.stats", "worker.heartbeat", "scale.up",
                                     "scale.down")
SUBMIT_ROUTING_KEY = "task"
STARTED_EVENT = "task.started"

# Message headers agentq sets on work messages.
ROUTE_HEADER = "x-agentq-route"
ATTEMPT_HEADER = "x-agentq-attempt"
# Not x-prefixed: a headers exchange ignores x- headers when matching.
DELAY_HEADER = "agentq-delay"
ERROR_HEADER = "x-agentq-error"


@dataclass(frozen=True)
class Names:
    """Every broker and Redis name of one namespace."""

    ns: str

    @property
    def submit(self) -> str:
        return f"{self.ns}.submit"

    @property
    def tasks(self) -> str:
        return f"{self.ns}.tasks"

    @property
    def work(self) -> str:
        return f"{self.ns}.work"

    def work_queue(self, tier: str) -> str:
        return f"{self.ns}.work.{tier}"

    def lane_queue(self, tier: str, tenant: str) -> str:
        """Return the work queue of one tenant in one tier (its lane)."""
        return f"{self.ns}.work.{lane_route(tier, tenant)}"

    def lanes_key(self, tier: str) -> str:
        """Return the Redis set of the tenants that have a lane in `tier`."""
        return self.redis_key("lanes", tier)

    def lanes_seen_key(self, tier: str) -> str:
        """Return the Redis sorted set of when each lane of `tier` was last published to."""
        return self.redis_key("lanes", tier, "seen")

    @property
    def lanes_version_key(self) -> str:
        """Return the Redis counter bumped whenever a lane is created or wakes from idle."""
        return self.redis_key("lanes", "version")

    @property
    def retry(self) -> str:
        return f"{self.ns}.retry"

    def retry_queue(self, delay_ms: int) -> str:
        return f"{self.ns}.retry.{delay_ms}"

    @property
    def batch(self) -> str:
        """The exchange and queue of deferrable tasks waiting for a provider batch."""
        return f"{self.ns}.batch"

    @property
    def results(self) -> str:
        return f"{self.ns}.results"

    @property
    def results_store(self) -> str:
        return f"{self.ns}.results.store"

    @property
    def started_store(self) -> str:
        """The queue of `task.started` events that mark stored tasks as running."""
        return f"{self.ns}.results.started"

    @property
    def events(self) -> str:
        return f"{self.ns}.events"

    @property
    def dashboard_events(self) -> str:
        return f"{self.ns}.dashboard.events"

    @property
    def dashboard_results(self) -> str:
        return f"{self.ns}.dashboard.results"

    @property
    def dlx(self) -> str:
        return f"{self.ns}.dlx"

    @property
    def dead(self) -> str:
        return f"{self.ns}.dead"

    @property
    def rejected(self) -> str:
        return f"{self.ns}.rejected"

    @property
    def lane_roster(self) -> str:
        """The broker's own list of tenant lanes (services.lanes.roster)."""
        return f"{self.ns}.lanes"

    def redis_key(self, *parts: str) -> str:
        return ":".join((self.ns, *parts))

    def exchanges(self) -> list[str]:
        return [self.submit, self.tasks, self.work, self.retry, self.results, self.events,
                self.dlx, self.batch]

    def queues(self) -> list[str]:
        """Return every queue name, main ones first."""
        return [self.submit, self.tasks, *(self.work_queue(t) for t in TIERS),
                self.results_store, self.started_store, self.dashboard_events,
                self.dashboard_results,
                self.dead, self.rejected, self.lane_roster,
                *(self.retry_queue(d) for d in RETRY_LEVELS_MS), self.batch]

    def monitored_queues(self) -> list[str]:
        """Return the queues whose depth tells how the pipeline keeps up."""
        return [self.submit, self.tasks, *(self.work_queue(t) for t in TIERS),
                self.results_store, self.dead, self.rejected]


def lane_route(tier: str, tenant: str) -> str:
    """Return the work routing key of a tenant's lane: `<tier>.<tenant>`."""
    return f"{tier}.{tenant}"


def tier_of(route: str) -> str:
    """Return the tier of a work routing key, a tier's own (`cheap`) or a lane's."""
    return route.split(".", 1)[0]


def retry_level(delay_ms: float) -> int:
    """Return the holding-queue level that a retry delay waits in."""
    for level in RETRY_LEVELS_MS:
        if delay_ms <= level:
            return level
    return RETRY_LEVELS_MS[-1]


# Classic: its entries are read and requeued at every sweep, which a quorum queue would count
# as redeliveries towards a delivery limit.
ROSTER_ARGUMENTS: dict[str, Any] = {"x-queue-type": "classic"}


def _quorum(names: Names, **extra: object) -> dict[str, Any]:
    return {"x-queue-type": "quorum", "x-dead-letter-exchange": names.dlx,
            "x-delivery-limit": DELIVERY_LIMIT, **extra}


async def declare_topology(channel: AbstractChannel, names: Names) -> None:
    """Declare every exchange, queue and binding; safe to run any number of times."""
    direct, topic = ExchangeType.DIRECT, ExchangeType.TOPIC
    ex = {
        names.submit: await channel.declare_exchange(names.submit, direct, durable=True),
        names.tasks: await channel.declare_exchange(names.tasks, direct, durable=True),
        names.work: await channel.declare_exchange(names.work, direct, durable=True),
        names.retry: await channel.declare_exchange(names.retry, ExchangeType.HEADERS,
                                                    durable=True),
        names.results: await channel.declare_exchange(names.results, topic, durable=True),
        names.events: await channel.declare_exchange(names.events, topic, durable=True),
        names.dlx: await channel.declare_exchange(names.dlx, topic, durable=True),
        names.batch: await channel.declare_exchange(names.batch, direct, durable=True),
    }

    async def queue(name: str, arguments: dict[str, Any], exchange: str | None = None,
                    *keys: str) -> Any:
        declared = await channel.declare_queue(name, durable=True, arguments=arguments)
        if exchange is not None:
            for key in keys or ("#",):
                await declared.bind(ex[exchange], routing_key=key)
        return declared

    await queue(names.submit, _quorum(names), names.submit, SUBMIT_ROUTING_KEY)
    await queue(names.tasks, _quorum(names), names.tasks, SUBMIT_ROUTING_KEY)
    for tier in TIERS:
        await queue(names.work_queue(tier), _quorum(names), names.work, tier)
    await queue(names.results_store, _quorum(names), names.results)
    telemetry = {"x-queue-type": "classic", "x-max-length": TELEMETRY_MAX_LENGTH,
                 "x-overflow": "drop-head"}
    dashboard_events = await queue(names.dashboard_events, telemetry, names.events,
                                   *DASHBOARD_EVENTS)
    # Namespaces declared before DASHBOARD_EVENTS bound it to every event.
    await dashboard_events.unbind(ex[names.events], routing_key="#")
    # "running" is a courtesy to people watching a task: lossy under overload, never blocking.
    await queue(names.started_store, telemetry, names.events, STARTED_EVENT)
    await queue(names.dashboard_results, telemetry, names.results)
    await queue(names.dead, {"x-queue-type": "quorum"}, names.dlx)
    await queue(names.rejected, {"x-queue-type": "quorum"})
    await queue(names.lane_roster, ROSTER_ARGUMENTS)
    # Deferrable tasks, routed and tiered, for the batcher (routing key = the tier).
    for tier in TIERS:
        await queue(names.batch, _quorum(names), names.batch, tier)
    for level in RETRY_LEVELS_MS:
        # Expired retries go back to the work exchange under their original routing key (the
        # tier or the lane they came from).
        declared = await channel.declare_queue(
            names.retry_queue(level), durable=True,
            arguments={"x-queue-type": "classic", "x-message-ttl": level,
                       "x-dead-letter-exchange": names.work})
        await declared.bind(ex[names.retry], arguments={"x-match": "all",
                                                        DELAY_HEADER: level})


async def declare_lane(channel: AbstractChannel, names: Names, tier: str, tenant: str) -> None:
    """Declare a tenant's lane in a tier and bind it to the work exchange; idempotent."""
    queue, route = names.lane_queue(tier, tenant), lane_route(tier, tenant)
    if isinstance(channel, AbstractRobustChannel):
        # Not restored on reconnect: a lane retired since would come back outside the registry.
        robust = await channel.declare_queue(queue, durable=True, arguments=_quorum(names),
                                             robust=False)
        await robust.bind(names.work, routing_key=route, robust=False)
        return
    declared = await channel.declare_queue(queue, durable=True, arguments=_quorum(names))
    await declared.bind(names.work, routing_key=route)


async def delete_topology(channel: AbstractChannel, names: Names,
                          lanes: Iterable[tuple[str, str]] = ()) -> None:
    """Delete every queue and exchange of a namespace, and the (tier, tenant) `lanes` given
    (tests and `agentq topology --delete`)."""
    for name in [*names.queues(), *(names.lane_queue(t, tenant) for t, tenant in lanes)]:
        await channel.queue_delete(name)
    for name in names.exchanges():
        await channel.exchange_delete(name)


async def declare(amqp_url: str, names: Names) -> None:
    """Connect, declare the topology, disconnect."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        await declare_topology(await connection.channel(), names)

