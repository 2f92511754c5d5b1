"""Read RabbitMQ queue depths: passive declares give ready messages and consumers (always,
and fresh), the management API adds unacknowledged counts when it answers in time.

A tier's backlog is spread over its own queue and one lane per tenant (services.lanes):
`WorkQueues` lists them from the lane registry, `tier_totals` folds their readings into one
per tier.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from urllib.parse import quote, unquote, urlparse

import aiohttp
from aio_pika.abc import AbstractConnection
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.common.passive_declare import passive_depths
from services.common.topology import Names
from services.lanes.registry import registered_lanes

log = logging.getLogger(__name__)
MANAGEMENT_PORT = 15672
MANAGEMENT_TIMEOUT_S = 1.0
MANAGEMENT_RETRY_S = 30.0  # after a failure, do not pay the timeout on every read
REGISTRY_TIMEOUT_S = 1.0  # a lane registry slower than this counts as unreachable


@dataclass(frozen=True)
class QueueDepth:
    """One queue as read just now."""

    queue: str
    ready: int
    unacked: int | None  # None: unknown (no management API)
    consumers: int
    source: str = "amqp"  # "amqp" (passive declare) or "management" (unacked from the API)


def management_url(amqp_url: str, port: int = MANAGEMENT_PORT) -> str:
    """Return the management API's base URL on the broker's host (no credentials in it)."""
    host = urlparse(amqp_url).hostname or "localhost"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def credentials(url: str) -> tuple[str, str]:
    """Return the (user, password) of a URL; RabbitMQ's guest/guest where it has none."""
    parsed = urlparse(url)
    return unquote(parsed.username or "guest"), unquote(parsed.password or "guest")


def vhost_of(amqp_url: str) -> str:
    """Return the virtual host an AMQP URL names ("/" when it names none)."""
    path = urlparse(amqp_url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def queues_request(management: str, amqp_url: str) -> tuple[str, str, str]:
    """Return (URL, user, password) of the one request that lists the vhost's queues.

    Credentials written into `management` win; otherwise the AMQP URL's are used.
    """
    parsed = urlparse(management)
    user, password = credentials(management if parsed.username else amqp_url)
    base = parsed._replace(netloc=parsed.netloc.rpartition("@")[2]).geturl().rstrip("/")
    vhost = quote(vhost_of(amqp_url), safe="")
    return f"{base}/api/queues/{vhost}?columns=name,messages_unacknowledged", user, password


async def read_passive(connection: AbstractConnection, queues: list[str]) -> list[QueueDepth]:
    """Read each queue by a passive declare; skip missing ones and those that failed."""
    return [QueueDepth(name, depth[0], None, depth[1])
            for name, depth in (await passive_depths(connection, queues)).items()
            if depth is not None]


class QueueDepths:
    """Read queues on an open connection, with the management API at `management` if any."""

    def __init__(self, connection: AbstractConnection, amqp_url: str, management: str | None,
                 timeout_s: float = MANAGEMENT_TIMEOUT_S,
                 retry_s: float = MANAGEMENT_RETRY_S) -> None:
        self.connection = connection
        self._request = queues_request(management, amqp_url) if management else None
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self._retry_at = 0.0

    async def read(self, queues: list[str]) -> list[QueueDepth]:
        """Return one reading per existing queue, with unacked counts when the API answers."""
        readings, unacked = await asyncio.gather(read_passive(self.connection, queues),
                                                 self.unacked())
        if unacked is None:
            return readings
        return [replace(r, unacked=unacked[r.queue], source="management")
                if r.queue in unacked else r for r in readings]

    async def unacked(self) -> dict[str, int] | None:
        """Return {queue: unacked} from one management API request; None when unavailable."""
        if self._request is None or time.monotonic() < self._retry_at:
            return None
        url, user, password = self._request
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        try:
            async with aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as http, \
                    http.get(url, headers={"Authorization": f"Basic {token}"}) as response:
                response.raise_for_status()
                rows = await response.json()
            return {row["name"]: int(row["messages_unacknowledged"]) for row in rows
                    if "messages_unacknowledged" in row}  # absent until the stats arrive
        except Exception as exc:  # any HTTP, JSON or network fault: unacked stays unknown
            log.info("management API unavailable (%r); retrying in %.0f s", exc, self.retry_s)
            self._retry_at = time.monotonic() + self.retry_s
            return None


class WorkQueues:
    """List each tier's work queues from the lane registry: the tier's own queue first, then
    its tenants' lanes.

    While the registry (Redis) cannot be read, the last listing stands (lanes are never taken
    away while a namespace lives), or each tier's own queue before any listing succeeded: the
    caller then counts less than the whole backlog rather than nothing. An outage is logged
    once.
    """

    def __init__(self, redis: Redis, names: Names, tiers: Iterable[str],
                 timeout_s: float = REGISTRY_TIMEOUT_S) -> None:
        self.redis = redis
        self.names = names
        self.tiers = list(tiers)
        self.timeout_s = timeout_s
        self._last: dict[str, list[str]] = {t: [names.work_queue(t)] for t in self.tiers}
        self._failing = False

    async def read(self) -> dict[str, list[str]]:
        """Return {tier: [tier queue, lane queues...]}."""
        try:
            lanes = await asyncio.wait_for(
                registered_lanes(self.redis, self.names, self.tiers), self.timeout_s)
        except (RedisError, OSError, TimeoutError) as exc:
            if not self._failing:
                log.warning("lane registry unreadable (%r): counting the %d queues known",
                            exc, sum(len(q) for q in self._last.values()))
                self._failing = True
            return {tier: list(queues) for tier, queues in self._last.items()}
        if self._failing:
            log.info("lane registry readable again")
            self._failing = False
        listing = {tier: [self.names.work_queue(tier)] for tier in self.tiers}
        for tier, tenant in lanes:
            listing[tier].append(self.names.lane_queue(tier, tenant))
        self._last = listing
        return {tier: list(queues) for tier, queues in listing.items()}

    async def flat(self) -> list[str]:
        """Return every work queue of the tiers in one list."""
        return [queue for queues in (await self.read()).values() for queue in queues]


def tier_totals(readings: Iterable[QueueDepth], queues: Mapping[str, Sequence[str]],
                names: Names) -> dict[str, QueueDepth]:
    """Fold the readings of each tier's `queues` (as `WorkQueues` lists them) into one reading
    per tier, named after the tier's own queue.

    Ready and unacknowledged messages are summed (unacked is unknown if any queue's is);
    consumers are the most any one of the queues has, since every worker of a tier consumes
    all of them. A tier none of whose queues was read is left out.
    """
    by_name = {r.queue: r for r in readings}
    totals: dict[str, QueueDepth] = {}
    for tier, own in queues.items():
        read = [by_name[q] for q in own if q in by_name]
        if not read:
            continue
        unacked = [r.unacked for r in read]
        totals[tier] = QueueDepth(
            names.work_queue(tier), sum(r.ready for r in read),
            None if None in unacked else sum(u for u in unacked if u is not None),
            max(r.consumers for r in read),
            "management" if all(r.source == "management" for r in read) else "amqp")
    return totals
