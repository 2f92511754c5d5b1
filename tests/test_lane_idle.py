"""The pure decisions behind idle lanes (services.lanes.plans): no broker, no Redis."""

from __future__ import annotations

import pydantic
import pytest

from services.common.settings import Settings
from services.lanes.plans import LaneView, plan, sweep_plan

IDLE_S = 600.0
NOW = 10_000.0
FRESH, STALE = NOW - 10, NOW - IDLE_S - 1


def test_idle_means_registered_with_a_time_older_than_idle_s() -> None:
    view = LaneView(NOW, {("cheap", "a"): FRESH, ("cheap", "b"): STALE,
                          ("cheap", "c"): None, ("cheap", "edge"): NOW - IDLE_S})
    assert view.idle(IDLE_S) == {("cheap", "b")}  # untimed and exactly idle_s old: awake


def test_plan_starts_awake_lanes_not_consumed_yet() -> None:
    view = LaneView(NOW, {("cheap", "a"): FRESH, ("cheap", "b"): None, ("cheap", "c"): STALE,
                          ("premium", "a"): FRESH})
    todo = plan(view, consumed={("cheap", "a")}, in_hand={}, idle_s=IDLE_S)
    assert todo.start == [("cheap", "b"), ("premium", "a")]  # an idle lane is not started
    assert todo.stop == []


def test_plan_stops_idle_lanes_only_with_nothing_in_hand() -> None:
    view = LaneView(NOW, {("cheap", "a"): STALE, ("cheap", "b"): STALE, ("cheap", "c"): FRESH})
    consumed = {("cheap", "a"), ("cheap", "b"), ("cheap", "c")}
    todo = plan(view, consumed, in_hand={("cheap", "a"): 3, ("cheap", "b"): 0}, idle_s=IDLE_S)
    assert todo.start == []
    assert todo.stop == [("cheap", "b")]


def test_plan_keeps_consumed_lanes_the_registry_does_not_list() -> None:
    # Redis restarted without persistence: the registry is empty until publishers re-register.
    todo = plan(LaneView(NOW, {}), consumed={("cheap", "a")}, in_hand={}, idle_s=IDLE_S)
    assert (todo.start, todo.stop) == ([], [])


def test_a_lane_wakes_when_its_time_is_fresh_again() -> None:
    consumed: set[tuple[str, str]] = set()
    asleep = plan(LaneView(NOW, {("cheap", "a"): STALE}), consumed, {}, IDLE_S)
    awake = plan(LaneView(NOW + 1, {("cheap", "a"): NOW + 1}), consumed, {}, IDLE_S)
    assert (asleep.start, awake.start) == ([], [("cheap", "a")])


RETIRE_S = 3600.0


def test_sweep_adopts_untimed_lanes_checks_idle_ones_and_retires_long_idle_ones() -> None:
    view = LaneView(NOW, {("cheap", "a"): FRESH, ("cheap", "b"): None, ("cheap", "c"): STALE,
                          ("standard", "d"): STALE, ("standard", "e"): NOW - RETIRE_S - 1})
    todo = sweep_plan(view, IDLE_S, RETIRE_S)
    assert todo.adopt == [("cheap", "b")]
    assert todo.check == [("cheap", "c"), ("standard", "d"), ("standard", "e")]
    assert todo.retire == [("standard", "e")]  # checked too: if it holds work, it wakes


def test_settings_refuse_a_retire_time_shorter_than_the_idle_time() -> None:
    assert Settings(lane_idle_s=600, lane_retire_s=600).lane_retire_s == 600
    with pytest.raises(pydantic.ValidationError, match="AGENTQ_LANE_RETIRE_S"):
        Settings(lane_idle_s=600, lane_retire_s=60)
    with pytest.raises(pydantic.ValidationError, match="lane_idle_s"):
        Settings(lane_idle_s=0)
