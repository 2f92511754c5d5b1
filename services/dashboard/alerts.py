"""Alert rules and their state machine: ok → pending → firing → resolving → ok (pure).

A rule fires once its value has stayed above the threshold for the rule's duration, and
resolves only once the value has stayed at or below threshold × (1 − hysteresis) for that
duration too. A value wandering around the threshold therefore neither fires (each dip
restarts the pending clock) nor, once firing, resolves: no flapping.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from services.dashboard.thresholds import RULES, RuleConfig, rule_configs

State = Literal["ok", "pending", "firing", "resolving"]
Notice = Literal["firing", "resolved"]
ACTIVE: frozenset[str] = frozenset({"firing", "resolving"})  # what the banner shows
TITLES: dict[str, str] = {r.key: r.title for r in RULES}
UNITS: dict[str, str] = {r.key: r.unit for r in RULES}


@dataclass(frozen=True)
class Status:
    """Where one rule stands, and since when."""

    state: State
    since: float
    value: float | None = None


@dataclass(frozen=True)
class Reading:
    """A rule's current value, the threshold it is held to now, and a detail for people."""

    value: float | None  # None = unknown (no sample): the rule holds its state
    threshold: float
    detail: str = ""


@dataclass(frozen=True)
class Transition:
    rule: str
    from_state: State
    to_state: State
    value: float | None
    threshold: float
    notice: Notice | None  # what a webhook hears about; pending and back is not news
    detail: str = ""


OK = Status("ok", 0.0)


def step(status: Status, reading: Reading, config: RuleConfig, hysteresis: float,
         now: float) -> Status:
    """Return the rule's next status for one evaluation."""
    value, threshold = reading.value, reading.threshold
    if not config.enabled:
        return status if status.state == "ok" else Status("ok", now, value)
    if value is None:
        return status
    above = value > threshold
    clear = value <= threshold * (1.0 - hysteresis)
    held = now - status.since >= config.for_s
    match status.state:
        case "ok":
            if not above:
                return Status("ok", status.since, value)
            return Status("firing" if config.for_s <= 0 else "pending", now, value)
        case "pending":
            if not above:
                return Status("ok", now, value)
            return Status("firing", now, value) if held else Status("pending", status.since,
                                                                    value)
        case "firing":
            if not clear:
                return Status("firing", status.since, value)
            return Status("ok" if config.for_s <= 0 else "resolving", now, value)
        case "resolving":
            if not clear:
                return Status("firing", now, value)  # never stopped, from the user's side
            return Status("ok", now, value) if held else Status("resolving", status.since,
                                                                value)
    return status


def notice_for(before: State, after: State) -> Notice | None:
    """Return what a state change means to a person: an alert started or ended."""
    if after == "firing" and before not in ACTIVE:
        return "firing"
    if after == "ok" and before in ACTIVE:
        return "resolved"
    return None


def evaluate(statuses: Mapping[str, Status], readings: Mapping[str, Reading],
             values: Mapping[str, float | bool | str], now: float
             ) -> tuple[dict[str, Status], list[Transition]]:
    """Step every rule once; return the new statuses and the state changes."""
    configs = rule_configs(values)
    hysteresis = float(values["hysteresis"])
    new: dict[str, Status] = {}
    changes: list[Transition] = []
    for rule, config in configs.items():
        before = statuses.get(rule, OK)
        reading = readings.get(rule, Reading(None, config.threshold))
        after = step(before, reading, config, hysteresis, now)
        new[rule] = after
        if after.state != before.state:
            changes.append(Transition(rule, before.state, after.state, reading.value,
                                      reading.threshold, notice_for(before.state, after.state),
                                      reading.detail))
    return new, changes


def cost_threshold(limit: float, factor: float, baseline_per_hour: float | None) -> float:
    """Return the cost-per-hour threshold: the limit, or K × the 24 h baseline if lower."""
    if factor > 0 and baseline_per_hour is not None and baseline_per_hour > 0:
        return min(limit, factor * baseline_per_hour)
    return limit


def describe(value: float | None, unit: str) -> str:
    """Format a rule value with its unit for a person."""
    if value is None:
        return "unknown"
    if unit == "USD/h":
        return f"${value:,.2f}/h"
    if unit == "%":
        return f"{value:.1f} %"
    number = f"{value:,.0f}" if abs(value) >= 10 else f"{value:,.2f}".rstrip("0").rstrip(".")
    return f"{number} {unit}"


def message(change: Transition, namespace: str) -> str:
    """Return the one-line text of a state change (history and webhook)."""
    title, unit = TITLES.get(change.rule, change.rule), UNITS.get(change.rule, "")
    value, limit = describe(change.value, unit), describe(change.threshold, unit)
    where = f" ({change.detail})" if change.detail else ""
    if change.notice == "firing":
        return f"[{namespace}] FIRING: {title} {value} > {limit}{where}"
    if change.notice == "resolved":
        return f"[{namespace}] RESOLVED: {title} back to {value} (threshold {limit}){where}"
    return f"[{namespace}] {title}: {change.from_state} → {change.to_state} at {value}{where}"


def broker_silence_s(last_sample: float | None, watching_since: float | None,
                     now: float) -> float | None:
    """Return how long RabbitMQ has gone unread: since the newest queue sample, or since the
    collector began watching if that is later (a restart must not count the time it was
    away); None = unknown (nothing sampled, nobody watching)."""
    known = [t for t in (last_sample, watching_since) if t is not None]
    return max(0.0, now - max(known)) if known else None


def growth_per_min(points: list[tuple[float, int]], min_span_s: float = 20.0) -> float | None:
    """Return the least-squares slope of (time, depth) points in messages per minute."""
    if len(points) < 2 or points[-1][0] - points[0][0] < min_span_s:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_d = sum(d for _, d in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    cov = sum((t - mean_t) * (d - mean_d) for t, d in points)
    return cov / var * 60 if var > 0 else None


def wrong_hit_pct(verified: float, agreed: float) -> float | None:
    """Share of sampled semantic hits whose fresh answer disagreed, in %; None: no sample."""
    if verified <= 0:
        return None
    return max(verified - agreed, 0.0) / verified * 100
