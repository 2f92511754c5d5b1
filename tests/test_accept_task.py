"""accept_task's decision table, without a broker or a database: one rule for both doors."""

from __future__ import annotations

from typing import Any

import pytest

from services.common.amqp import PublishFailed
from services.common.models import Task
from services.common.store import ACCEPTED, UNPUBLISHED_AFTER_S
from services.common.topology import SUBMIT_ROUTING_KEY, Names
from services.ingest.accept import (
    Accepted,
    StoreUnavailable,
    accept_task,
    on_known_id,
    queue_stored,
    task_route,
)

NOW = 1_000_000.0


class FakeStore:
    """The tasks table as a dict keyed by (tenant, id), with switchable failures."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], dict[str, Any]] = {}
        self.down: set[str] = set()  # names of the methods that raise StoreUnavailable

    def put(self, task: Task, status: str, age_s: float) -> None:
        self.rows[(task.tenant, task.id)] = {
            "id": task.id, "tenant": task.tenant, "status": status,
            "task_json": task.model_dump_json(), "created_at": NOW - age_s}

    def _check(self, name: str) -> None:
        if name in self.down:
            raise StoreUnavailable(f"{name}: down")

    def insert(self, task: Task) -> tuple[dict[str, Any], bool]:
        self._check("insert")
        key = (task.tenant, task.id)
        if key in self.rows:
            return dict(self.rows[key]), False
        self.put(task, ACCEPTED, age_s=0)
        return dict(self.rows[key]), True

    def forget(self, task: Task) -> None:
        self._check("forget")
        key = (task.tenant, task.id)
        if self.rows.get(key, {}).get("status") == ACCEPTED:
            del self.rows[key]

    def mark_queued(self, task: Task) -> None:
        self._check("mark_queued")
        row = self.rows.get((task.tenant, task.id))
        if row is not None and row["status"] == ACCEPTED:
            row["status"] = "queued"

    def status(self, task: Task) -> str | None:
        row = self.rows.get((task.tenant, task.id))
        return None if row is None else str(row["status"])


class FakePublisher:
    """Records what was published; `fail` makes every publish unconfirmed."""

    def __init__(self, fail: bool = False) -> None:
        self.published: list[Task] = []
        self.fail = fail

    def publish_task(self, task: Task) -> None:
        if self.fail:
            raise PublishFailed(f"task {task.id} not confirmed")
        self.published.append(task)


def _task(task_id: str = "t-1", prompt: str = "hello", tenant: str = "acme") -> Task:
    return Task(id=task_id, tenant=tenant, prompt=prompt, submitted_at=NOW)


STALE = UNPUBLISHED_AFTER_S + 1
FRESH = UNPUBLISHED_AFTER_S - 1


# --- the rule for an id already stored ------------------------------------------------------

@pytest.mark.parametrize(("status", "age_s", "redelivered", "expected"), [
    (ACCEPTED, FRESH, False, "duplicate"),  # its first request is still publishing
    (ACCEPTED, FRESH, True, "republish"),  # its consumer died before the confirm
    (ACCEPTED, STALE, False, "republish"),  # its ingest died between store and publish
    (ACCEPTED, STALE, True, "republish"),
    ("queued", STALE, True, "duplicate"),
    ("queued", FRESH, False, "duplicate"),
    ("running", STALE, True, "duplicate"),
    ("succeeded", STALE, False, "duplicate"),
    ("failed", FRESH, True, "duplicate"),
])
def test_a_known_id_is_republished_only_while_unconfirmed(status: str, age_s: float,
                                                         redelivered: bool,
                                                         expected: str) -> None:
    row = {"status": status, "created_at": NOW - age_s}
    assert on_known_id(row, NOW, redelivered) == expected


# --- accept_task over a store and a publisher ---------------------------------------------

def test_a_new_task_is_stored_published_and_marked_queued() -> None:
    store, publisher = FakeStore(), FakePublisher()
    task = _task()
    assert accept_task(task, store, publisher, NOW) == Accepted("t-1", "queued")
    assert publisher.published == [task]
    assert store.status(task) == "queued"


@pytest.mark.parametrize("redelivered", [False, True])
@pytest.mark.parametrize("status", ["queued", "running", "succeeded", "failed"])
def test_a_known_confirmed_id_is_answered_its_status_and_nothing_is_published(
        status: str, redelivered: bool) -> None:
    store, publisher = FakeStore(), FakePublisher()
    store.put(_task(), status, age_s=STALE)
    accepted = accept_task(_task(prompt="another body"), store, publisher, NOW, redelivered)
    assert accepted == Accepted("t-1", status, duplicate=True)
    assert accepted.answer() == {"id": "t-1", "status": status}
    assert publisher.published == []
    assert store.status(_task()) == status


def test_a_resubmit_while_the_first_request_publishes_is_answered_queued() -> None:
    store, publisher = FakeStore(), FakePublisher()
    store.put(_task(), ACCEPTED, age_s=FRESH)
    accepted = accept_task(_task(), store, publisher, NOW)
    assert accepted == Accepted("t-1", "queued", duplicate=True)  # never "accepted"
    assert publisher.published == []
    assert store.status(_task()) == ACCEPTED  # left to the request that stored it


@pytest.mark.parametrize(("age_s", "redelivered"), [(FRESH, True), (STALE, False),
                                                    (STALE, True)])
def test_an_unconfirmed_task_is_published_as_first_stored(age_s: float,
                                                          redelivered: bool) -> None:
    store, publisher = FakeStore(), FakePublisher()
    first = _task(prompt="as first accepted")
    store.put(first, ACCEPTED, age_s=age_s)
    accepted = accept_task(_task(prompt="resubmitted body"), store, publisher, NOW,
                           redelivered)
    assert accepted == Accepted("t-1", "queued")
    assert publisher.published == [first]
    assert store.status(first) == "queued"


def test_an_unconfirmed_publish_forgets_the_new_row_so_a_retry_starts_afresh() -> None:
    store, publisher = FakeStore(), FakePublisher(fail=True)
    with pytest.raises(PublishFailed):
        accept_task(_task(), store, publisher, NOW)
    assert store.status(_task()) is None
    publisher.fail = False
    assert accept_task(_task(), store, publisher, NOW) == Accepted("t-1", "queued")
    assert len(publisher.published) == 1


def test_an_unconfirmed_republish_keeps_the_stored_row() -> None:
    store, publisher = FakeStore(), FakePublisher(fail=True)
    store.put(_task(), ACCEPTED, age_s=STALE)
    with pytest.raises(PublishFailed):
        accept_task(_task(), store, publisher, NOW)
    assert store.status(_task()) == ACCEPTED  # the next retry, or the sweeper, publishes it


def test_a_row_that_cannot_be_forgotten_is_left_for_the_retry() -> None:
    store, publisher = FakeStore(), FakePublisher(fail=True)
    store.down.add("forget")
    with pytest.raises(PublishFailed):
        accept_task(_task(), store, publisher, NOW)
    assert store.status(_task()) == ACCEPTED
    publisher.fail = False
    # The client's retry (or the redelivery) of that id publishes the stored task.
    assert accept_task(_task(), store, publisher, NOW, redelivered=True).duplicate is False
    assert len(publisher.published) == 1


def test_a_store_that_does_not_answer_publishes_nothing() -> None:
    store, publisher = FakeStore(), FakePublisher()
    store.down.add("insert")
    with pytest.raises(StoreUnavailable):
        accept_task(_task(), store, publisher, NOW)
    assert publisher.published == []


def test_a_published_task_that_cannot_be_marked_is_still_queued() -> None:
    store, publisher = FakeStore(), FakePublisher()
    store.down.add("mark_queued")
    assert accept_task(_task(), store, publisher, NOW) == Accepted("t-1", "queued")
    assert len(publisher.published) == 1
    assert store.status(_task()) == ACCEPTED  # the sweeper may publish it once more


def test_tenants_own_their_ids() -> None:
    store, publisher = FakeStore(), FakePublisher()
    accept_task(_task(tenant="acme"), store, publisher, NOW)
    accepted = accept_task(_task(tenant="beta"), store, publisher, NOW)
    assert accepted == Accepted("t-1", "queued")
    assert [t.tenant for t in publisher.published] == ["acme", "beta"]


def test_queue_stored_publishes_then_marks() -> None:
    store, publisher = FakeStore(), FakePublisher()
    store.put(_task(), ACCEPTED, age_s=STALE)
    queue_stored(_task(), store, publisher)
    assert store.status(_task()) == "queued" and len(publisher.published) == 1


def test_both_doors_publish_to_the_tasks_exchange_under_the_submit_key() -> None:
    assert task_route(Names("ns1")) == ("ns1.tasks", SUBMIT_ROUTING_KEY)
