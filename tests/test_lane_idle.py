"""The pure decisions behind idle lanes (services.common.lane_idle): no broker, no Redis."""

from __future__ import annotations

from services.common.lane_idle import LaneView, plan, sweep_plan

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


def test_sweep_adopts_untimed_lanes_and_checks_idle_ones() -> None:
    view = LaneView(NOW, {("cheap", "a"): FRESH, ("cheap", "b"): None, ("cheap", "c"): STALE,
                          ("standard", "d"): STALE})
    todo = sweep_plan(view, IDLE_S)
    assert todo.adopt == [("cheap", "b")]
    assert todo.check == [("cheap", "c"), ("standard", "d")]
