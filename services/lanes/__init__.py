"""Tenant lanes: one work queue per (tier, tenant), so one tenant's flood waits in its own.

With one FIFO queue per tier, a tenant that floods it stands in front of everyone: the
workers must take its tasks to reach the others'. With a lane per tenant every worker
consumes every awake lane of its tiers, each with the worker's prefetch, so each tenant's
next tasks are always in hand and the shared limiter decides who goes first. The tier's own
queue (`<ns>.work.<tier>`) stays bound and consumed: it takes work published by tier alone,
and the router's tasks whenever the lane registry (Redis) is unreachable.

- `plans`: the pure decisions (which lanes to consume, what the sweep looks at, timings).
- `registry`: which lanes exist and when each was last published to, in Redis.
- `roster`: the broker's own list of lanes, from which the sweep recovers those Redis lost.
- `state`: `LaneState`, the one owner of a process's lane state (registered, consumed, in
  hand).
- `directory`: where a publisher sends a tenant's work (the router; a worker escalating,
  retrying or holding a task).
- `watcher`: a worker starts and stops consuming lanes as they wake and go idle.
- `sweeper`: the namespace-wide job that wakes, adopts and retires lanes.
"""
