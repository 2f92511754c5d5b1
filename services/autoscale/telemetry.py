"""What the workers report about themselves: tasks in hand (heartbeats) and task time."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.models import Event

HEARTBEAT_STALE_S = 15.0  # three missed heartbeats: the worker is gone
EWMA_WEIGHT = 0.05


@dataclass
class WorkerReports:
    """Fold `worker.heartbeat` and `task.completed` events into two figures."""

    default_task_s: float
    _in_flight: dict[str, tuple[float, int]] = field(default_factory=dict)
    _task_s: float | None = None

    def observe(self, event: Event, now: float) -> None:
        """Take one event (received at `now`, in the caller's clock)."""
        data = event.data
        if event.type == "worker.heartbeat":
            worker = str(data.get("worker_id") or data.get("pid") or "")
            in_flight = data.get("in_flight")
            if worker and isinstance(in_flight, int | float):
                self._in_flight[worker] = (now, int(in_flight))
        elif event.type == "task.completed":
            llm_ms = data.get("llm_ms")
            if isinstance(llm_ms, int | float) and llm_ms > 0:
                seconds = llm_ms / 1000
                self._task_s = seconds if self._task_s is None else (
                    (1 - EWMA_WEIGHT) * self._task_s + EWMA_WEIGHT * seconds)

    def in_flight(self, now: float) -> int | None:
        """Return the tasks the live workers hold, or None before any heartbeat arrived."""
        live = [count for seen, count in self._in_flight.values()
                if now - seen <= HEARTBEAT_STALE_S]
        return sum(live) if live else (0 if self._in_flight else None)

    @property
    def task_s(self) -> float:
        """Return the mean task time seen so far (the configured guess until one is seen)."""
        return self._task_s if self._task_s is not None else self.default_task_s
