"""The scaling policy: how many workers a queue's depth and growth call for, within capacity.

Plain functions over plain numbers: the local autoscaler, the dashboard's "suggested workers"
card and the tests all call the same `suggest_workers`; cool-down is a pure state function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ScaleDecision:
    """How many workers to run, and why."""

    target: int
    reason: str

    @property
    def workers(self) -> int:
        """Return the target (the name the dashboard's suggestion card reads)."""
        return self.target


def capacity_workers(per_worker_rate: float, limiter_rpm: int = 0, limiter_tpm: int = 0,
                     tokens_per_task: int = 0) -> int | None:
    """Return how many workers the pools' capacity (RPM, TPM) can keep busy; None: unlimited."""
    rates = []  # tasks per second each limit allows
    if limiter_rpm > 0:
        rates.append(limiter_rpm / 60)
    if limiter_tpm > 0 and tokens_per_task > 0:
        rates.append(limiter_tpm / tokens_per_task / 60)
    if not rates or per_worker_rate <= 0:
        return None
    return max(1, math.ceil(min(rates) / per_worker_rate - 1e-9))


def suggest_workers(ready: int, unacked: int, growth_per_min: float, current: int,
                    min_workers: int, max_workers: int, per_worker_rate: float,
                    limiter_rpm: int = 0, limiter_tpm: int = 0, tokens_per_task: int = 0,
                    concurrency: int = 32, drain_s: float = 60.0) -> ScaleDecision:
    """Return the worker count for this queue state.

    ready, unacked: messages waiting and in hand; growth_per_min: how fast their sum grows;
    per_worker_rate: tasks/s one worker completes (its concurrency over the task time);
    concurrency: tasks one worker holds at once; drain_s: how soon a backlog should be gone.
    The count covers what is in flight now (Little's law: ceil(unacked / concurrency)), the
    workers that clear `ready` within `drain_s`, and those that absorb positive growth. It
    stays within [min_workers, max_workers] and never exceeds what the limiter's capacity
    (RPM/TPM) can feed: workers beyond that only wait in the limiter, and cost money.
    """
    floor = max(0, min_workers)
    ceiling = max(floor, max_workers)
    ready, unacked = max(0, ready), max(0, unacked)
    if ready + unacked == 0 and growth_per_min <= 0:
        return ScaleDecision(floor, "queue empty")
    rate = max(per_worker_rate, 1e-9)
    busy = unacked / max(1, concurrency)
    backlog = ready / (rate * max(drain_s, 1e-9))
    growth = max(0.0, growth_per_min) / 60 / rate
    need = math.ceil(busy + backlog + growth - 1e-9)
    why = (f"{ready} ready, {unacked} in flight, {growth_per_min:+.0f}/min at "
           f"{per_worker_rate:.1f} tasks/s per worker: {need} needed")
    capacity = capacity_workers(per_worker_rate, limiter_rpm, limiter_tpm, tokens_per_task)
    if capacity is not None and need > max(capacity, floor) and capacity < ceiling:
        target = max(capacity, floor)
        return ScaleDecision(target, f"{why}; capped at {target} by the limiter's capacity "
                                     f"({limiter_rpm} RPM, {limiter_tpm} TPM)")
    if need > ceiling:
        return ScaleDecision(ceiling, f"{why}; capped at the maximum {ceiling}")
    if need < floor:
        return ScaleDecision(floor, f"{why}; held at the minimum {floor}")
    return ScaleDecision(need, why)


@dataclass(frozen=True)
class Cooldown:
    """When the pool last changed size (monotonic seconds; None = never)."""

    last_change: float | None = None


def apply_cooldown(decision: ScaleDecision, current: int, state: Cooldown, now: float,
                   up_s: float, down_s: float) -> tuple[ScaleDecision, Cooldown]:
    """Hold `current` while the last change is younger than the cool-down of this direction.

    Returns the decision to act on and the new state (stamped `now` when the size changes).
    """
    if decision.target == current:
        return decision, state
    wait = up_s if decision.target > current else down_s
    if state.last_change is not None and now - state.last_change < wait:
        left = wait - (now - state.last_change)
        direction = "up" if decision.target > current else "down"
        return (ScaleDecision(current, f"cool-down: {left:.0f}s before scaling {direction} "
                                       f"to {decision.target} ({decision.reason})"), state)
    return decision, Cooldown(last_change=now)
