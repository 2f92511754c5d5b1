"""The batcher's decisions, as pure functions over plain data (unit-tested without a broker).

Which task may wait for a batch, which waiting claims form a batch now, which must go live
to keep their deadline, how a restart picks up a batch it lost track of, and what becomes of
each claim once its batch has ended.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from services.common.deadlines import due_live
from services.common.deferral import batch_entry, goes_to_batch
from services.common.models import Task

__all__ = ["batch_entry", "goes_to_batch"]  # re-exported: the batcher reads them from its plan

ClaimState = Literal["waiting", "uploading", "submitted", "done", "live"]
HELD: tuple[ClaimState, ...] = ("waiting", "uploading", "submitted")  # no Result yet
# The provider's statuses after which a batch changes no more (OpenAI's Batch object).
ENDED_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})


@dataclass(frozen=True)
class Claim:
    """One deferrable task the batcher holds (a row of `agentq_batch_claims`)."""

    tenant: str
    task_id: str
    custom_id: str
    provider: str
    model: str
    tier: str
    state: ClaimState
    claimed_at: float
    deadline_at: float | None = None
    group_id: str | None = None
    batch_id: str | None = None
    route_reason: str = ""


def custom_id_of(task: Task) -> str:
    """Return a task's `custom_id` in a batch: `<tenant>/<id>` (ids are unique per tenant;
    neither holds a `/`)."""
    return f"{task.tenant}/{task.id}"


def ready_groups(waiting: Iterable[Claim], now: float, max_lines: int,
                 max_age_s: float) -> list[list[Claim]]:
    """Return the batches to send now: per (provider, model), oldest first, full batches of
    `max_lines`, and the rest once its oldest claim has waited `max_age_s`."""
    by_model: dict[tuple[str, str], list[Claim]] = defaultdict(list)
    for claim in sorted(waiting, key=lambda c: (c.claimed_at, c.custom_id)):
        by_model[(claim.provider, claim.model)].append(claim)
    ready: list[list[Claim]] = []
    for claims in by_model.values():
        for start in range(0, len(claims), max_lines):
            chunk = claims[start:start + max_lines]
            if len(chunk) == max_lines or chunk[0].claimed_at <= now - max_age_s:
                ready.append(chunk)
    return ready


def affordable(waiting: Iterable[Claim], levels: Mapping[str, str]) -> list[Claim]:
    """Return the waiting claims whose tenant is not at a hard budget limit: those wait (as a
    worker holds a live task) until the budget allows them or their deadline sends them live."""
    return [c for c in waiting if levels.get(c.tenant, "ok") != "hard"]


def due_claims(claims: Iterable[Claim], now: float, live_margin_s: float) -> list[Claim]:
    """Return the claims still without a Result whose deadline is now too near to wait."""
    return [c for c in claims if c.state in HELD and c.deadline_at is not None
            and due_live(_moment(now), _moment(c.deadline_at), live_margin_s)]


@dataclass(frozen=True)
class Reconciled:
    """What a restart does with the batches it was uploading when it stopped."""

    adopt: dict[str, str]  # group_id -> the provider's batch id: it exists, poll it
    upload: list[str]  # group_ids the provider never created: upload them (once)


def reconcile(uploading: Iterable[str], found: Mapping[str, str]) -> Reconciled:
    """Match groups left `uploading` with the provider's batches (by `metadata.agentq_group`)."""
    adopt: dict[str, str] = {}
    upload: list[str] = []
    for group_id in uploading:
        if group_id in found:
            adopt[group_id] = found[group_id]
        else:
            upload.append(group_id)
    return Reconciled(adopt, upload)


def twins(claims: Iterable[Claim], keys: Mapping[str, str | None]) -> list[list[Claim]]:
    """Group claims by request, in order: identical tasks (the same exact-cache key, by
    custom_id in `keys`, as the workers' in-flight dedup keys them) share one line of a batch,
    the first one's; a claim without a key (not cacheable) is a line of its own."""
    lines: dict[tuple[bool, str], list[Claim]] = {}
    for claim in claims:
        key = keys.get(claim.custom_id)
        lines.setdefault((True, key) if key else (False, claim.custom_id), []).append(claim)
    return list(lines.values())


@dataclass(frozen=True)
class BatchEnd:
    """What becomes of a batch's claims once it has ended."""

    answered: list[Claim]  # a line answered it: publish its Result at the batch price
    live: list[Claim]  # failed, expired, cancelled or missing: send it to its tier live
    # custom_id of an answered claim -> the line that answered it (its own, or a twin's that
    # went live before the batch ended)
    line_of: dict[str, str] = field(default_factory=dict)
    # twins answered by another claim's line, at no cost: (twin, the claim priced for it)
    twins: list[tuple[Claim, Claim]] = field(default_factory=list)


def batch_end(members: Iterable[Claim], answered_ids: Iterable[str],
              keys: Mapping[str, str | None] | None = None) -> BatchEnd:
    """Split an ended batch's claims: answered lines get a Result, every other one goes live.

    Twins (`keys`, see `twins`) share their line's answer: the first one still held takes the
    Result at the batch price, the others a copy of it that costs nothing, as a live twin's
    dedup answer does. Claims already `done` or `live` (sent live as their deadline neared)
    are left alone, so an answer that comes after all is not published a second time.
    """
    answers = set(answered_ids)
    ended = BatchEnd([], [])
    for group in twins(members, keys or {}):
        line = next((c.custom_id for c in group if c.custom_id in answers), None)
        held = [c for c in group if c.state in HELD]
        if line is None:
            ended.live.extend(held)
        elif held:
            owner, *others = held
            ended.answered.append(owner)
            ended.line_of[owner.custom_id] = line
            ended.twins.extend((twin, owner) for twin in others)
    return ended


def _moment(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)
