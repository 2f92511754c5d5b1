"""Which tenant lanes to consume: the pure decisions behind waking and idling lanes.

Every worker consumes every lane of its tiers, each with its own prefetch. With thousands of
tenants most lanes are empty most of the time, yet each would hold a consumer and a channel
in every worker. So a lane nothing was published to for `idle_s` is idle: workers stop
consuming it (once they hold none of its messages), and it wakes, everywhere at once, with
the tenant's next task. Idle far longer (`retire_s`), its queue is deleted by the sweep
(services.lanes.sweeper.LaneSweeper.retire) and declared again with the tenant's next task.

Nothing here touches Redis or the broker: `LaneView` is what the registry said, read in one
round trip with Redis's clock.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Set
from dataclasses import dataclass

Lane = tuple[str, str]  # (tier, tenant)

# A publisher re-registers a lane it publishes to at most this often: that keeps the lane
# awake, and rebuilds a registry that Redis lost (a restart without persistence) with each
# tenant's next task.
REGISTER_EVERY_S = 30.0
# What AMQP (and pamqp, which refuses anything else) accepts as a queue name.
_QUEUE_NAME = re.compile(r"[A-Za-z0-9\-_.:]{1,255}")


def can_name_a_queue(name: str) -> bool:
    return _QUEUE_NAME.fullmatch(name) is not None


def refresh_s(idle_s: float) -> float:
    """How often publishers register a lane in use, workers look for idle lanes, and the sweep
    runs: often enough that a lane in use never looks idle, and a quarter of the idle time at
    most."""
    return min(REGISTER_EVERY_S, idle_s / 4)


@dataclass(frozen=True)
class LaneView:
    """The registry at one instant: each registered lane and when it was last published to
    (None: registered by a version that did not record it), and Redis's time then."""

    now: float
    seen: Mapping[Lane, float | None]

    def idle(self, idle_s: float) -> set[Lane]:
        """Return the lanes nothing was published to for `idle_s` seconds."""
        cutoff = self.now - idle_s
        return {lane for lane, at in self.seen.items() if at is not None and at < cutoff}


@dataclass(frozen=True)
class LanePlan:
    start: list[Lane]  # registered, awake, not consumed yet
    stop: list[Lane]  # consumed, idle, and none of its messages in hand


def plan(view: LaneView, consumed: Set[Lane], in_hand: Mapping[Lane, int],
         idle_s: float) -> LanePlan:
    """Decide which lanes a worker starts and stops consuming.

    A lane the registry does not list (Redis restarted and lost it) is kept as it is: only a
    lane known to be idle is ever stopped, and only once the worker holds none of its
    messages (stopping closes the channel their acks need).
    """
    idle = view.idle(idle_s)
    start = sorted(lane for lane in view.seen if lane not in consumed and lane not in idle)
    stop = sorted(lane for lane in consumed & idle if not in_hand.get(lane, 0))
    return LanePlan(start, stop)


@dataclass(frozen=True)
class SweepPlan:
    adopt: list[Lane]  # registered without a time: give them one (now), as if just used
    check: list[Lane]  # idle: wake any that has messages after all
    retire: list[Lane]  # idle for retire_s: delete the queue, if it holds nothing


def sweep_plan(view: LaneView, idle_s: float, retire_s: float) -> SweepPlan:
    """Decide what the periodic sweep looks at.

    A message can reach an idle lane without a publisher recording it (an AMQP client
    publishing to the lane's routing key itself): the sweep reads idle lanes' depths and
    wakes those that hold messages, so such a task is late by at most one sweep, never
    stranded. A lane idle for `retire_s` that holds nothing (no message ready, no consumer
    holding one) is retired: its queue is deleted, and declared again with its next task.
    """
    adopt = sorted(lane for lane, at in view.seen.items() if at is None)
    return SweepPlan(adopt, sorted(view.idle(idle_s)), sorted(view.idle(retire_s)))
