"""Test the deadline rules: parsing a deadline, choosing batch or live, and when to go live."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from services.common.deadlines import (
    MAX_AHEAD,
    due_live,
    live_at,
    parse_deadline,
    parse_duration,
    route_deferrable,
)

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
DAY = 86400.0

# --- parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("30m", 1800),
        ("24h", 86400),
        ("2d", 172800),
        ("1h30m", 5400),
        ("1d2h3m4s", 93784),
        (" 7D ", 7 * 86400),
    ],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)
    assert parse_deadline(text, NOW) == NOW + timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("0s", "longer than zero"),
        ("0h0m", "longer than zero"),
        ("8d", "further than 7 days"),
        ("169h", "further than 7 days"),
        ("99999999999999999999d", "further than 7 days"),
        ("1h1h", "repeats a unit"),
        ("90", "neither an ISO-8601 time"),
        ("1.5h", "neither an ISO-8601 time"),
        ("-5m", "neither an ISO-8601 time"),
        ("1w", "neither an ISO-8601 time"),
        ("soon", "neither an ISO-8601 time"),
        ("2026-13-40T00:00:00Z", "neither an ISO-8601 time"),
    ],
)
def test_bad_deadlines_are_refused_naming_the_value(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as caught:
        parse_deadline(text, NOW)
    assert repr(text) in str(caught.value)


@pytest.mark.parametrize(
    ("text", "moment"),
    [
        ("2026-12-03T18:00:00Z", NOW + timedelta(hours=6)),
        ("2026-12-03T18:00:00+02:00", NOW + timedelta(hours=4)),
        ("2026-12-04T12:00:00.5+00:00", NOW + timedelta(days=1, milliseconds=500)),
        ("2026-12-02T12:00:00Z", NOW - timedelta(days=1)),  # already past: it will go live
    ],
)
def test_iso_times_with_a_zone(text: str, moment: datetime) -> None:
    assert parse_deadline(text, NOW) == moment


def test_an_iso_time_keeps_its_zone() -> None:
    parsed = parse_deadline("2026-12-03T15:00:00+03:00", NOW)
    assert parsed.utcoffset() == timedelta(hours=3) and parsed == NOW


def test_a_naive_time_is_refused_with_a_hint() -> None:
    with pytest.raises(ValueError, match="no time zone.*'Z'") as caught:
        parse_deadline("2026-12-03T18:00:00", NOW)
    assert "'2026-12-03T18:00:00'" in str(caught.value)


def test_an_iso_time_too_far_ahead_is_refused() -> None:
    ahead = (NOW + MAX_AHEAD + timedelta(seconds=1)).isoformat()
    with pytest.raises(ValueError, match="further than 7 days"):
        parse_deadline(ahead, NOW)
    assert parse_deadline((NOW + MAX_AHEAD).isoformat(), NOW) == NOW + MAX_AHEAD


@pytest.mark.parametrize("value", ["", "   ", None, 90, True, ["1h"]])
def test_non_strings_and_blanks_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="non-empty string"):
        parse_deadline(value, NOW)


def test_now_must_carry_a_zone() -> None:
    with pytest.raises(ValueError, match="now must carry a time zone"):
        parse_deadline("1h", datetime(2026, 12, 3, 12, 0))


# --- batch or live ------------------------------------------------------------------------


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("deadline", "deferrable", "route"),
    [
        (at(2 * DAY), False, "live"),  # not deferrable: always live, whatever the room
        (None, False, "live"),
        (None, True, "batch"),  # no deadline of its own: the batch window bounds it
        (at(2 * DAY), True, "batch"),  # plenty of room
        (at(DAY + 600), True, "batch"),  # exactly turnaround + margin: just enough
        (at(DAY + 599), True, "live"),  # a second short: the live fallback could not make it
        (at(DAY), True, "live"),  # the batch might come back only at the deadline
        (at(60), True, "live"),
        (at(-60), True, "live"),  # already late
    ],
)
def test_route_deferrable(deadline: datetime | None, deferrable: bool, route: str) -> None:
    assert route_deferrable(NOW, deadline, deferrable, DAY, 600) == route


def test_route_compares_moments_across_zones() -> None:
    tokyo = (NOW + timedelta(hours=30)).astimezone(timezone(timedelta(hours=9)))
    assert route_deferrable(NOW, tokyo, True, DAY, 3600) == "batch"
    assert route_deferrable(NOW, tokyo, True, DAY, 7 * 3600) == "live"


@pytest.mark.parametrize(
    ("turnaround", "margin", "name"),
    [(-1.0, 0.0, "batch_turnaround_s"), (0.0, -1.0, "live_margin_s"), (float("nan"), 0, "batch")],
)
def test_route_refuses_negative_spans(turnaround: float, margin: float, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        route_deferrable(NOW, at(DAY), True, turnaround, margin)


def test_route_refuses_a_naive_deadline() -> None:
    with pytest.raises(ValueError, match="deadline must carry a time zone"):
        route_deferrable(NOW, datetime(2026, 12, 5), True, DAY, 600)


# --- a batched task whose deadline comes close ---------------------------------------------


@pytest.mark.parametrize(
    ("now", "due"),
    [
        (at(0), False),
        (at(DAY - 601), False),
        (at(DAY - 600), True),  # the margin starts: send it live now
        (at(DAY), True),
        (at(DAY + 60), True),  # late already: still live, at once
    ],
)
def test_due_live(now: datetime, due: bool) -> None:
    assert due_live(now, at(DAY), 600) is due


def test_due_live_without_a_deadline_never_fires() -> None:
    assert due_live(at(6 * DAY), None, 600) is False


def test_live_at_is_the_deadline_less_the_margin() -> None:
    assert live_at(at(DAY), 600) == at(DAY - 600)
    with pytest.raises(ValueError, match="live_margin_s"):
        live_at(at(DAY), -5)


def test_due_live_refuses_naive_times() -> None:
    with pytest.raises(ValueError, match="now must carry a time zone"):
        due_live(datetime(2026, 12, 3), at(DAY), 600)
    with pytest.raises(ValueError, match="live_margin_s"):
        due_live(NOW, at(DAY), -1)


def test_a_routed_and_a_due_task_agree_at_the_boundary() -> None:
    # A task routed to batch is never already due live; one refused for batch may be.
    for room in (DAY + 600, DAY + 599, 600, 599):
        deadline = at(room)
        if route_deferrable(NOW, deadline, True, DAY, 600) == "batch":
            assert not due_live(NOW, deadline, 600)
