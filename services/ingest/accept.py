"""Store, publish, forget: how either door of ingest accepts one task.

Both doors call `accept_task` with the store and the publisher of their process, so a task
id arriving twice gets one answer whichever door it came through (`on_known_id`):

| stored row                         | delivery           | stored     | published  | answer   |
|------------------------------------|--------------------|------------|------------|----------|
| none                               | any                | new row    | the task   | queued   |
| `accepted`, younger than 15 s      | first              | kept       | nothing    | queued   |
| `accepted`, younger than 15 s      | redelivered (AMQP) | kept       | stored one | queued   |
| `accepted`, older than 15 s        | any                | kept       | stored one | queued   |
| `queued`, `running` or finished    | any                | kept       | nothing    | its own  |

A young `accepted` row is a first request still publishing: a plain resubmit is a duplicate.
A redelivered AMQP message is different: its consumer died before the broker confirmed it, so
the stored task is published again (a rare duplicate is the lesser harm; a lost task is not).
What is republished is the task as first stored, never the resubmitted body.

A publish the broker does not confirm forgets the row it just stored (so the client's retry,
or the redelivery, starts afresh) and raises `PublishFailed`; a store that does not answer
raises `StoreUnavailable`. Only a confirmed publish is answered `queued`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from services.common.amqp import PublishFailed
from services.common.models import Task
from services.common.store import ACCEPTED, is_unpublished, visible_status
from services.common.topology import SUBMIT_ROUTING_KEY, Names

log = logging.getLogger(__name__)


class StoreUnavailable(Exception):
    """The results store did not answer (the door answers 503 or gives the message back)."""


class TaskStore(Protocol):
    """Where accepted tasks are kept (services.ingest.sql_store.SqlTaskStore)."""

    def insert(self, task: Task) -> tuple[dict[str, Any], bool]:
        """Store a task as accepted; for a known id the stored row and False."""

    def forget(self, task: Task) -> None:
        """Remove an accepted task that could not be queued."""

    def mark_queued(self, task: Task) -> None:
        """Record that the broker confirmed the task."""


class TaskPublisher(Protocol):
    """What queues accepted tasks to the router: raises `PublishFailed` unless confirmed."""

    def publish_task(self, task: Task) -> None:
        """Publish `task` to `task_route(...)` and wait for the broker's confirm."""


def task_route(names: Names) -> tuple[str, str]:
    """Return the exchange and routing key an accepted task is published under."""
    return names.tasks, SUBMIT_ROUTING_KEY


@dataclass(frozen=True)
class Accepted:
    """What a door answers for one task: its id and status, and whether it was a duplicate
    (nothing published)."""

    id: str
    status: str
    duplicate: bool = False

    def answer(self) -> dict[str, str]:
        """Return the HTTP body of this task: `{"id", "status"}`."""
        return {"id": self.id, "status": self.status}


def on_known_id(row: dict[str, Any], now: float,
                redelivered: bool) -> Literal["duplicate", "republish"]:
    """Decide what a task id already stored gets: publish the stored task again, or answer
    the stored status and publish nothing (the table in this module's docstring)."""
    if row["status"] != ACCEPTED:
        return "duplicate"
    if redelivered or is_unpublished(row, now):
        return "republish"
    return "duplicate"


def queue_stored(task: Task, store: TaskStore, publisher: TaskPublisher) -> None:
    """Publish a stored task and mark it queued (the intake's resend, and accept_task's)."""
    publisher.publish_task(task)
    try:
        store.mark_queued(task)
    except StoreUnavailable:  # it is queued; the resend may publish it once more, that is all
        log.warning("could not mark task %s/%s queued", task.tenant, task.id, exc_info=True)


def accept_task(task: Task, store: TaskStore, publisher: TaskPublisher, now: float,
                redelivered: bool = False) -> Accepted:
    """Store a stamped task and queue it, once per id; see the module docstring."""
    row, created = store.insert(task)
    if not created:
        if on_known_id(row, now, redelivered) == "duplicate":
            return Accepted(task.id, visible_status(row["status"]), duplicate=True)
        log.warning("task %s/%s was stored but never queued; queueing it now",
                    task.tenant, task.id)
        task = Task.model_validate_json(row["task_json"])  # as it was first accepted
    try:
        queue_stored(task, store, publisher)
    except PublishFailed:
        if created:
            _forget(store, task)
        raise
    return Accepted(task.id, "queued")


def _forget(store: TaskStore, task: Task) -> None:
    try:
        store.forget(task)
    except StoreUnavailable:
        # The row stays "accepted": a retry or redelivery publishes it, else the resend does.
        log.warning("could not forget unqueued task %s/%s", task.tenant, task.id,
                    exc_info=True)
