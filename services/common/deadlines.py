"""Decide what a task's deadline allows: parse it, and choose batch or live.

Pure functions over plain values (the caller passes `now`), so the rule is unit-tested
without a clock, a broker or a provider. A deadline is either an ISO-8601 time with a zone
or a duration from when the task was accepted ("90s", "30m", "24h", "2d", "1h30m").
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Literal

Route = Literal["batch", "live"]

# Far enough for any provider's batch window (24 h) with days to spare; anything further
# is more likely a typo ("30d" for "30m") than a real wish.
MAX_AHEAD = timedelta(days=7)
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION = re.compile(r"(?:\d+[dhms])+")
_PART = re.compile(r"(\d+)([dhms])")


def parse_duration(text: str) -> timedelta:
    """Return the span of "90s", "30m", "24h", "2d" or a compound such as "1h30m"."""
    compact = text.strip().lower()
    if not _DURATION.fullmatch(compact):
        raise ValueError(_bad_form(text))
    parts = _PART.findall(compact)
    if len({unit for _, unit in parts}) != len(parts):
        raise ValueError(f"deadline {text!r} repeats a unit")
    # Bounded as an int before it becomes a timedelta, which overflows on absurd values.
    seconds = sum(int(number) * _UNITS[unit] for number, unit in parts)
    if seconds <= 0:
        raise ValueError(f"deadline {text!r} must be longer than zero")
    if seconds > MAX_AHEAD.total_seconds():
        raise ValueError(f"deadline {text!r} is further than {MAX_AHEAD.days} days ahead")
    return timedelta(seconds=seconds)


def parse_deadline(value: object, now: datetime) -> datetime:
    """Return the moment a deadline names, a duration counted from `now` (zone-aware)."""
    _require_aware(now, "now")
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"deadline {value!r} must be a non-empty string")
    text = value.strip()
    if _DURATION.fullmatch(text.lower()):
        return now + parse_duration(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(_bad_form(value)) from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(
            f"deadline {value!r} has no time zone; add one, e.g. 'Z' or '+02:00', "
            f"so it means the same moment everywhere"
        )
    if moment - now > MAX_AHEAD:
        raise ValueError(f"deadline {value!r} is further than {MAX_AHEAD.days} days ahead")
    return moment


def route_deferrable(
    now: datetime,
    deadline: datetime | None,
    deferrable: bool,
    batch_turnaround_s: float,
    live_margin_s: float,
) -> Route:
    """Choose "batch" when the task may wait and its deadline leaves room; else "live".

    Room means the batch's expected turnaround plus the margin a live call needs if the
    batch has not come back in time, so a batched task can still make its deadline.
    """
    _require_non_negative(batch_turnaround_s, "batch_turnaround_s")
    _require_non_negative(live_margin_s, "live_margin_s")
    if not deferrable:
        return "live"
    if deadline is None:
        return "batch"  # no deadline of its own: the provider's batch window bounds it
    _require_aware(now, "now")
    _require_aware(deadline, "deadline")
    room = (deadline - now).total_seconds()
    return "batch" if room >= batch_turnaround_s + live_margin_s else "live"


def live_at(deadline: datetime, live_margin_s: float) -> datetime:
    """Return the moment a batched task still waiting must be sent live instead."""
    _require_non_negative(live_margin_s, "live_margin_s")
    return deadline - timedelta(seconds=live_margin_s)


def due_live(now: datetime, deadline: datetime | None, live_margin_s: float) -> bool:
    """Say whether a task waiting in a batch must now be sent live to keep its deadline."""
    _require_non_negative(live_margin_s, "live_margin_s")
    if deadline is None:
        return False
    _require_aware(now, "now")
    _require_aware(deadline, "deadline")
    return now >= live_at(deadline, live_margin_s)


def _bad_form(value: str) -> str:
    return (
        f"deadline {value!r} is neither an ISO-8601 time with a zone nor a duration "
        f"such as '90s', '30m', '24h', '2d' or '1h30m'"
    )


def _require_aware(moment: datetime, name: str) -> None:
    # Comparing naive and aware times raises deep inside; say which argument is wrong.
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must carry a time zone, got naive {moment.isoformat()}")


def _require_non_negative(seconds: float, name: str) -> None:
    if not seconds >= 0:  # also refuses NaN
        raise ValueError(f"{name} must be a number of seconds of at least 0, got {seconds!r}")
