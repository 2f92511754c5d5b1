"""Decide where a simulated batch stands: pure functions of its plan and the clock.

A batch spends the first tenth of its completion time validating, the next eight tenths
in progress (lines are answered at an even pace, in file order), the last tenth finalizing,
and then ends completed or, when expiry was ordered, expired with half its lines answered.
A cancel moves it to cancelling for a tenth of the completion time, then to cancelled; the
lines answered by the cancel are kept, the rest are reported as not run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Status = Literal[
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
]
TERMINAL: frozenset[Status] = frozenset({"failed", "completed", "expired", "cancelled"})
VALIDATING_SHARE = 0.1
FINALIZING_SHARE = 0.1
CANCELLING_SHARE = 0.1
EXPIRED_SHARE = 0.5  # of the lines an expiring batch answers before the window closes


@dataclass(frozen=True, slots=True)
class Plan:
    """Hold what is fixed when a batch is created: its clock, size and fate."""

    created: float
    completion_s: float
    total: int
    expire: bool = False
    failed_lines: frozenset[int] = frozenset()  # indexes of lines answered with an error
    invalid: str | None = None  # why validation fails; the batch then ends failed

    @property
    def in_progress_at(self) -> float:
        """Return when validation ends."""
        return self.created + self.completion_s * VALIDATING_SHARE

    @property
    def finalizing_at(self) -> float:
        """Return when the last line has been run."""
        return self.created + self.completion_s * (1 - FINALIZING_SHARE)

    @property
    def ends_at(self) -> float:
        """Return when the batch ends, if nobody cancels it."""
        return self.created + self.completion_s


def status_at(plan: Plan, now: float, cancelled_at: float | None = None) -> Status:
    """Return the batch's status at `now`, given when (if ever) a cancel arrived."""
    if now < plan.in_progress_at:
        return "cancelling" if cancelled_at is not None else "validating"
    if plan.invalid is not None:
        return "failed"
    if cancelled_at is not None and cancelled_at < plan.ends_at:
        return "cancelled" if now >= cancel_done_at(plan, cancelled_at) else "cancelling"
    if now >= plan.ends_at:
        return "expired" if plan.expire else "completed"
    return "in_progress" if now < plan.finalizing_at else "finalizing"


def cancel_done_at(plan: Plan, cancelled_at: float) -> float:
    """Return when a batch cancelled at `cancelled_at` reaches cancelled."""
    return max(cancelled_at, plan.in_progress_at) + plan.completion_s * CANCELLING_SHARE


def lines_run(plan: Plan, now: float) -> int:
    """Return how many lines (from the top of the file) have been run by `now`."""
    if plan.invalid is not None:
        return 0
    share = EXPIRED_SHARE if plan.expire else 1.0
    span = plan.finalizing_at - plan.in_progress_at
    progress = 1.0 if span <= 0 else min(1.0, max(0.0, (now - plan.in_progress_at) / span))
    return math.floor(plan.total * share * progress)


def run_until(plan: Plan, now: float, cancelled_at: float | None = None) -> int:
    """Return the lines run by `now`; nothing more runs once a cancel has arrived."""
    if cancelled_at is not None:
        now = min(now, cancelled_at)
    return lines_run(plan, now)


def request_counts(plan: Plan, now: float, cancelled_at: float | None = None) -> dict[str, int]:
    """Return {total, completed, failed}; at the end every line not answered counts as failed."""
    run = run_until(plan, now, cancelled_at)
    failed = sum(1 for index in plan.failed_lines if index < run)
    if status_at(plan, now, cancelled_at) in TERMINAL and plan.invalid is None:
        return {"total": plan.total, "completed": run - failed, "failed": plan.total - run + failed}
    return {"total": plan.total, "completed": run - failed, "failed": failed}


def reached_at(plan: Plan, now: float, cancelled_at: float | None = None) -> dict[str, int | None]:
    """Return the *_at times of the batch object for the stages reached by `now`."""
    status = status_at(plan, now, cancelled_at)
    times: dict[str, int | None] = dict.fromkeys(
        (
            "in_progress_at",
            "finalizing_at",
            "completed_at",
            "failed_at",
            "expired_at",
            "cancelling_at",
            "cancelled_at",
        ),
        None,
    )
    stopped = cancelled_at is not None and cancelled_at < plan.ends_at
    until = min(now, cancelled_at) if stopped and cancelled_at is not None else now
    if plan.invalid is None and until >= plan.in_progress_at:
        times["in_progress_at"] = int(plan.in_progress_at)
    if plan.invalid is None and until >= plan.finalizing_at:
        times["finalizing_at"] = int(plan.finalizing_at)
    if stopped and cancelled_at is not None:
        times["cancelling_at"] = int(cancelled_at)
    ended = {
        "completed": ("completed_at", plan.ends_at),
        "expired": ("expired_at", plan.ends_at),
        "failed": ("failed_at", plan.in_progress_at),
        "cancelled": ("cancelled_at", cancel_done_at(plan, cancelled_at or 0.0)),
    }.get(status)
    if ended is not None:
        times[ended[0]] = int(ended[1])
    return times
