"""What the worker can do with a work message, as values: `decide.py` returns them, `act.py`
carries them out. Each is frozen: a decision, once made, is not changed on the way."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.common.actions import Emit, Reject
from services.common.cache import CachedAnswer
from services.common.models import Result, Task
from services.common.topology import ROUTE_HEADER
from services.common.work_headers import ROUTED_TIER_HEADER


def header_text(headers: Mapping[str, Any], name: str) -> str:
    value = headers.get(name)
    return value.decode() if isinstance(value, bytes) else str(value or "")


@dataclass(frozen=True)
class WorkOrder:
    """One work message as the worker reads it: the task, its tier, attempt and headers."""

    task: Task
    tier: str
    attempt: int
    headers: Mapping[str, Any] = field(default_factory=dict)

    @property
    def route_reason(self) -> str:
        return header_text(self.headers, ROUTE_HEADER)

    @property
    def routed_tier(self) -> str:
        """The tier the router chose: caches and the dedup lock are keyed by it."""
        return header_text(self.headers, ROUTED_TIER_HEADER) or self.tier


@dataclass(frozen=True)
class Call:
    """Call the provider: nothing answered or stopped the task before."""


@dataclass(frozen=True)
class Publish:
    """Publish the task's Result (and to its reply queue)."""

    result: Result
    reply_to: str | None = None


@dataclass(frozen=True)
class Hold:
    """Send the task back to its lane after `delay_ms`: its tenant is at the hard spend limit."""

    tier: str
    task: Task
    headers: Mapping[str, Any]
    delay_ms: float


@dataclass(frozen=True)
class Retry:
    """Try the task again as `attempt` after `delay_ms`, through the delay queues."""

    tier: str
    task: Task
    headers: Mapping[str, Any]
    delay_ms: float
    attempt: int


@dataclass(frozen=True)
class Escalate:
    """Run the task again on `tier` (its answer failed the validator one tier below)."""

    tier: str
    task: Task
    headers: Mapping[str, Any]


@dataclass(frozen=True)
class Dead:
    """Give up on the task: publish its failed Result, and dead-letter it with the reason."""

    result: Result
    task: Task
    route: str
    headers: Mapping[str, Any]
    reason: str
    reply_to: str | None = None


@dataclass(frozen=True)
class Charge:
    """Add a call's cost to the tenant's spend ledger."""

    tenant: str
    usd: float


@dataclass(frozen=True)
class Release:
    """Let twins of the task call for themselves: give up its in-flight lock."""

    task: Task
    routed_tier: str


@dataclass(frozen=True)
class Remember:
    """Cache an answer under `tiers` (exact) and `semantic_tier` (semantic, when set)."""

    task: Task
    answer: CachedAnswer
    tiers: tuple[str, ...]
    semantic_tier: str | None


@dataclass(frozen=True)
class Verify:
    """Record how a sampled semantic hit compared with the real answer; evict it if wrong."""

    key: str
    agreed: bool


Action = (Reject | Call | Publish | Hold | Retry | Escalate | Dead | Charge | Release | Remember
          | Verify | Emit)
Plan = tuple[Action, ...]
