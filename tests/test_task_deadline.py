"""Task.deadline / Task.deferrable: checked at the door, resolved once at acceptance."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
from flask.testing import FlaskClient

from services.common.models import Task
from services.common.settings import Settings
from services.common.topology import Names
from services.ingest.app import create_app
from services.ingest.routes import EXTENSION
from services.ingest.validation import InvalidTask, parse_task, parse_tasks

if TYPE_CHECKING:
    from conftest import Rabbit


def test_defaults_are_live_without_deadline() -> None:
    task = Task(prompt="x")
    assert (task.deadline, task.deferrable, task.deadline_at) == (None, False, None)
    assert task.stamped().deadline_moment() is None


@pytest.mark.parametrize("bad", ["tomorrow", "0s", "30x", "2026-12-03T18:00:00", "8d", ""])
def test_a_bad_deadline_is_refused_naming_the_field(bad: str) -> None:
    with pytest.raises(InvalidTask) as caught:
        parse_task({"prompt": "x", "deadline": bad})
    assert caught.value.field == "deadline"
    with pytest.raises(InvalidTask) as listed:
        parse_tasks([{"prompt": "x"}, {"prompt": "x", "deadline": bad}])
    assert listed.value.field == "[1].deadline"


def test_a_duration_is_resolved_once_at_acceptance() -> None:
    before = time.time()
    stamped = Task(prompt="x", deadline="24h", deferrable=True).stamped()
    assert stamped.deadline == "24h"  # the wire value is kept as given
    assert stamped.deadline_at is not None
    assert before + 86400 <= stamped.deadline_at <= time.time() + 86400
    # Carried on as an absolute time: read later, it names the same moment.
    assert stamped.deadline_moment() == datetime.fromtimestamp(stamped.deadline_at, UTC)


def test_a_client_cannot_set_the_resolved_deadline() -> None:
    task = Task.model_validate({"prompt": "x", "deadline_at": 1.0}).stamped()
    assert task.deadline_at is None
    later = Task.model_validate({"prompt": "x", "deadline": "1h", "deadline_at": 1.0}).stamped()
    assert later.deadline_at is not None and later.deadline_at > time.time() + 3500


def test_an_iso_deadline_and_one_never_stamped() -> None:
    moment = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=3)
    assert Task(prompt="x", deadline=moment.isoformat()).stamped().deadline_moment() == moment
    # Not through ingest (a test, an old message): the duration counts from submitted_at.
    raw = Task(prompt="x", deadline="1h", submitted_at=1_800_000_000.0)
    assert raw.deadline_moment() == datetime.fromtimestamp(1_800_003_600.0, UTC)


@pytest.fixture
def client(settings: Settings) -> Iterator[FlaskClient]:
    app = create_app(settings)
    yield app.test_client()
    ingest = app.extensions[EXTENSION]
    ingest.publisher.close()
    ingest.engine.dispose()
    ingest.redis.close()


def test_the_http_door_carries_the_resolved_deadline(client: FlaskClient, rabbit: Rabbit,
                                                     settings: Settings) -> None:
    names = Names(settings.namespace)
    bad = client.post("/v1/tasks", json={"prompt": "x", "deadline": "soon"})
    assert bad.status_code == 400
    assert bad.get_json()["error"]["field"] == "deadline"
    assert rabbit.count(names.tasks) == 0

    ok = client.post("/v1/tasks", json={"prompt": "x", "deadline": "2h", "deferrable": True})
    assert ok.status_code == 202
    queued = rabbit.get(names.tasks).json()
    assert (queued["deadline"], queued["deferrable"]) == ("2h", True)
    assert abs(queued["deadline_at"] - (queued["submitted_at"] + 7200)) < 1
