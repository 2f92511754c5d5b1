"""Ingest: validation as pure functions, then both doors against the real broker and store."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import CollectorRegistry

from services.common.models import Result, Usage
from services.common.settings import Settings
from services.common.store import get_task, insert_task, make_engine, record_results
from services.common.topology import SUBMIT_ROUTING_KEY, Names
from services.common.webserver import gunicorn_command
from services.ingest import intake
from services.ingest.app import create_app
from services.ingest.metrics import IngestMetrics, make_metrics
from services.ingest.routes import EXTENSION
from services.ingest.serve import APP
from services.ingest.validation import (
    MAX_TASKS_PER_REQUEST,
    InvalidTask,
    decode_json,
    parse_task,
    parse_tasks,
)

if TYPE_CHECKING:
    from conftest import Rabbit

# --- validation: pure functions -------------------------------------------------------------

MSG = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(("payload", "field"), [
    ({"kind": "classify"}, "messages"),
    ({"messages": MSG, "prompt": "hi"}, "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
    ({"messages": [{"role": "user"}]}, "messages.0.content"),
    ({"prompt": "hi", "priority": 10}, "priority"),
    ({"prompt": "hi", "temperature": -1}, "temperature"),
    ({"prompt": "hi", "colour": "red"}, "colour"),
    ({"prompt": "hi", "tier": "gold"}, "tier"),
    ({"prompt": "hi", "id": "no spaces please"}, "id"),
    ("just a string", "body"),
    ([{"prompt": "hi"}], "body"),
    (None, "body"),
])
def test_parse_task_names_the_bad_field(payload: object, field: str) -> None:
    with pytest.raises(InvalidTask) as caught:
        parse_task(payload)
    assert caught.value.field == field
    assert caught.value.message


def test_parse_task_turns_prompt_into_messages() -> None:
    task = parse_task({"prompt": "hi", "kind": "classify", "priority": 9})
    assert [m.model_dump() for m in task.messages] == MSG
    assert (task.kind, task.priority, task.tenant) == ("classify", 9, "default")
    assert task.id


@pytest.mark.parametrize(("payload", "field"), [
    ([{"prompt": "a"}, {"prompt": "b", "kind": "bad kind!"}], "[1].kind"),
    ([{"prompt": "a"}, {"prompt": "b"}, {"prompt": "c"}, "oops"], "[3]"),
    ([], "body"),
    ([{"prompt": "a"}] * (MAX_TASKS_PER_REQUEST + 1), "body"),
])
def test_parse_tasks_rejects_the_whole_list(payload: object, field: str) -> None:
    with pytest.raises(InvalidTask) as caught:
        parse_tasks(payload)
    assert caught.value.field == field


def test_parse_tasks_takes_an_object_or_a_list() -> None:
    assert len(parse_tasks({"prompt": "a"})) == 1
    assert [t.messages[0].content for t in parse_tasks([{"prompt": "a"}, {"prompt": "b"}])] \
        == ["a", "b"]


@pytest.mark.parametrize("raw", [b"", b"{nope", b'{"prompt": NaN}', b"\xff\xfe\xfa", b"[1,"])
def test_decode_json_rejects_non_json(raw: bytes) -> None:
    with pytest.raises(InvalidTask) as caught:
        decode_json(raw)
    assert caught.value.field == "body"


def test_gunicorn_command_uses_this_interpreter() -> None:
    command = gunicorn_command(APP, "127.0.0.1", 8123, 2, 8)
    assert command[:3] == [sys.executable, "-m", "gunicorn"]
    assert command[command.index("--bind") + 1] == "127.0.0.1:8123"
    assert gunicorn_command(APP, "::", 8123, 2, 8)[4] == "[::]:8123"
    assert "--no-control-socket" in command  # ingest and dashboard share a host
    assert command[-1] == "services.ingest.app:create_app()"


# --- the HTTP door, against RabbitMQ, Redis and the database ---------------------------------

@contextmanager
def running_app(settings: Settings) -> Iterator[Flask]:
    """Create the ingest app and release its clients afterwards."""
    app = create_app(settings)
    try:
        yield app
    finally:
        ingest = app.extensions[EXTENSION]
        ingest.publisher.close()
        ingest.engine.dispose()
        ingest.redis.close()


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    with running_app(settings) as app:
        yield app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def names(settings: Settings) -> Names:
    return Names(settings.namespace)


def _error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json
    error: dict[str, Any] = response.get_json()["error"]
    assert set(error) == {"code", "message", "field"}
    return error


def test_submit_queues_the_task(client: FlaskClient, rabbit: Rabbit, names: Names) -> None:
    response = client.post("/v1/tasks", json={"prompt": "hi", "kind": "classify",
                                              "priority": 7, "metadata": {"k": 1}})
    assert response.status_code == 202
    answer = response.get_json()
    assert answer["status"] == "queued"

    delivery = rabbit.get(names.tasks)
    task = delivery.json()
    assert task["id"] == answer["id"]
    assert (task["kind"], task["priority"], task["metadata"]) == ("classify", 7, {"k": 1})
    assert task["messages"] == MSG
    assert task["submitted_at"] > 0
    assert delivery.properties.content_type == "application/json"
    assert delivery.properties.delivery_mode == 2
    assert delivery.properties.priority == 7

    shown = client.get(f"/v1/tasks/{answer['id']}").get_json()
    assert (shown["status"], shown["kind"], shown["tenant"]) == ("queued", "classify", "default")
    assert shown["result"] is None


def test_submit_a_list(client: FlaskClient, rabbit: Rabbit, names: Names) -> None:
    response = client.post("/v1/tasks", json=[{"prompt": "a"}, {"prompt": "b", "tenant": "t2"}])
    assert response.status_code == 202
    answers = response.get_json()
    assert [a["status"] for a in answers] == ["queued", "queued"]
    queued = [rabbit.get(names.tasks).json() for _ in answers]
    assert [t["id"] for t in queued] == [a["id"] for a in answers]
    assert queued[1]["tenant"] == "t2"


def test_resubmit_is_idempotent(client: FlaskClient, rabbit: Rabbit, names: Names,
                                settings: Settings) -> None:
    task_id = f"job-{uuid.uuid4().hex}"
    body = {"id": task_id, "prompt": "hi"}
    assert client.post("/v1/tasks", json=body).get_json() == {"id": task_id, "status": "queued"}
    again = client.post("/v1/tasks", json=body)
    assert again.status_code == 202
    assert again.get_json() == {"id": task_id, "status": "queued"}
    rabbit.get(names.tasks)
    assert rabbit.count(names.tasks) == 0  # the second submission published nothing

    engine = make_engine(settings.database_url)
    try:
        record_results(engine, [Result(task_id=task_id, tenant="default", status="succeeded")])
    finally:
        engine.dispose()
    done = client.post("/v1/tasks", json=body)
    assert (done.status_code, done.get_json()) == (202, {"id": task_id, "status": "succeeded"})
    assert rabbit.count(names.tasks) == 0


@pytest.mark.parametrize(("body", "field"), [
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
    ({"prompt": "x", "priority": 10}, "priority"),
    ([{"prompt": "a"}, {"prompt": "b", "temperature": -1}], "[1].temperature"),
    ("not a task", "body"),
])
def test_invalid_task_is_400_naming_the_field(client: FlaskClient, rabbit: Rabbit,
                                              names: Names, body: object, field: str) -> None:
    error = _error(client.post("/v1/tasks", json=body), 400)
    assert (error["code"], error["field"]) == ("invalid_task", field)
    assert rabbit.count(names.tasks) == 0  # a list is all or nothing


def _nested(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


# Bodies that parse but would break a later step (pydantic, the store, the broker): each is
# refused at the door, the same at both doors, with the field it concerns.
HOSTILE_BODIES = [
    pytest.param(("[" * 5000 + "]" * 5000).encode(), "body", id="nesting-5000"),
    pytest.param(('{"prompt": "x", "metadata": ' + _nested(240) + "}").encode(), "metadata",
                 id="metadata-240-deep"),
    pytest.param(b'{"prompt": "x", "metadata": {"n": ' + b"9" * 5000 + b"}}", "body",
                 id="int-5000-digits"),
    pytest.param(b'{"prompt": "hi \\ud800 there"}', "prompt",
                 id="lone-surrogate-prompt"),
    pytest.param(b'{"prompt": "x", "metadata": {"k": "\\udfff"}}',
                 "metadata.k", id="lone-surrogate-metadata"),
    pytest.param(json.dumps({"prompt": "x", "tenant": "\U00020000" * 62}).encode(), "tenant",
                 id="tenant-over-64-bytes"),
    pytest.param(json.dumps({"prompt": "x", "id": "."}).encode(), "id", id="id-dot"),
    pytest.param(json.dumps({"prompt": "x", "id": ".."}).encode(), "id", id="id-dotdot"),
]


@pytest.mark.parametrize(("raw", "field"), HOSTILE_BODIES)
def test_hostile_bodies_are_400_naming_the_field(client: FlaskClient, rabbit: Rabbit,
                                                 names: Names, raw: bytes, field: str) -> None:
    error = _error(client.post("/v1/tasks", data=raw, content_type="application/json"), 400)
    assert (error["code"], error["field"]) == ("invalid_task", field)
    assert rabbit.count(names.tasks) == 0


@pytest.mark.parametrize("raw", [b"{not json", b"", b"\x00\x01garbage"])
def test_non_json_is_400_on_body(client: FlaskClient, raw: bytes) -> None:
    error = _error(client.post("/v1/tasks", data=raw, content_type="application/json"), 400)
    assert error["field"] == "body"


def test_too_large_body_is_413(client: FlaskClient) -> None:
    big = json.dumps({"prompt": "x" * int(1.1 * 1024 * 1024)})
    error = _error(client.post("/v1/tasks", data=big, content_type="application/json"), 413)
    assert (error["code"], error["field"]) == ("too_large", "body")


def test_api_keys_are_required_when_set(settings: Settings) -> None:
    keyed = settings.model_copy(update={"api_keys": "k1, k2"})
    with running_app(keyed) as app:
        client = app.test_client()
        assert _error(client.post("/v1/tasks", json={"prompt": "x"}), 401)["code"] \
            == "unauthorized"
        wrong = {"Authorization": "Bearer k3"}
        _error(client.post("/v1/tasks", json={"prompt": "x"}, headers=wrong), 401)
        _error(client.get("/v1/tasks/anything"), 401)
        right = {"Authorization": "Bearer k2"}
        assert client.post("/v1/tasks", json={"prompt": "x"}, headers=right).status_code == 202
        assert client.get("/healthz").status_code == 200
        assert client.get("/metrics").status_code == 200


def test_unknown_task_is_404(client: FlaskClient) -> None:
    error = _error(client.get("/v1/tasks/nope"), 404)
    assert error["code"] == "not_found"


def test_get_shows_the_result(client: FlaskClient, settings: Settings) -> None:
    task_id = client.post("/v1/tasks", json={"prompt": "2+2?", "tenant": "acme"}).get_json()["id"]
    engine = make_engine(settings.database_url)
    try:
        record_results(engine, [Result(task_id=task_id, tenant="acme", status="succeeded",
                                       output="4", model="gpt-4o-mini", tier="cheap",
                                       usage=Usage(prompt_tokens=5, completion_tokens=1),
                                       cost_usd=0.001)])
    finally:
        engine.dispose()
    shown = client.get(f"/v1/tasks/{task_id}").get_json()
    assert (shown["id"], shown["status"], shown["tenant"]) == (task_id, "succeeded", "acme")
    assert shown["created_at"] > 0
    assert shown["result"]["output"] == "4"
    assert shown["result"]["usage"] == {"prompt_tokens": 5, "completion_tokens": 1}


def test_backlog_over_the_limit_is_429(settings: Settings,
                                       eventually: Callable[..., Any]) -> None:
    with running_app(settings.model_copy(update={"max_backlog": 0})) as app:
        client = app.test_client()
        assert client.post("/v1/tasks", json={"prompt": "x"}).status_code == 202

        def refused() -> Any:
            response = client.post("/v1/tasks", json={"prompt": "x"})
            return response if response.status_code == 429 else None

        # The backlog is cached for a second: poll until the waiting task is seen.
        response = eventually(refused)
        assert response.headers["Retry-After"]
        assert _error(response, 429)["code"] == "backlog_full"


def test_broker_down_is_503_and_nothing_is_kept(settings: Settings) -> None:
    down = settings.model_copy(update={"amqp_url": "amqp://guest:guest@127.0.0.1:1/"})
    with running_app(down) as app:
        client = app.test_client()
        response = client.post("/v1/tasks", json={"id": "lost-1", "prompt": "x"})
        assert _error(response, 503)["code"] == "unavailable"
        assert response.headers["Retry-After"]
        _error(client.get("/v1/tasks/lost-1"), 404)  # forgotten: a retry will be accepted
        health = client.get("/healthz")
        assert health.status_code == 503
        assert health.get_json() == {"status": "degraded", "amqp": False, "redis": True,
                                     "database": True}


def test_healthz_and_metrics(client: FlaskClient) -> None:
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.get_json() == {"status": "ok", "amqp": True, "redis": True, "database": True}
    client.post("/v1/tasks", json={"prompt": "x"})
    client.post("/v1/tasks", json={"prompt": "x", "priority": 99})
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    text = metrics.get_data(as_text=True)
    assert 'tasks_accepted_total{door="http"} 1.0' in text
    assert 'tasks_rejected_total{door="http",reason="400"} 1.0' in text
    assert "ingest_http_request_duration_seconds_bucket" in text


def test_every_error_is_json(client: FlaskClient) -> None:
    assert _error(client.get("/nowhere"), 404)["code"] == "not_found"
    wrong_method = client.delete("/v1/tasks")
    assert _error(wrong_method, 405)["code"] == "method_not_allowed"
    assert "POST" in wrong_method.headers["Allow"]


# --- the AMQP door -----------------------------------------------------------------------------

@pytest.fixture
def running_intake(settings: Settings, rabbit: Rabbit, names: Names,
                   eventually: Callable[..., Any]) -> Iterator[IngestMetrics]:
    """Run intake.run in a background event loop until the test ends."""
    metrics = make_metrics(CollectorRegistry())
    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    failures: list[BaseException] = []

    def serve() -> None:
        try:
            loop.run_until_complete(intake.run(settings, stop, metrics))
        except BaseException as exc:  # reported by the fixture's teardown
            failures.append(exc)
        finally:
            loop.close()

    thread = threading.Thread(target=serve, name="intake", daemon=True)
    thread.start()

    def consuming() -> bool:
        assert not failures, failures
        depth = rabbit.depth(names.submit)
        return depth is not None and depth[1] > 0

    eventually(consuming)
    yield metrics
    loop.call_soon_threadsafe(stop.set)
    thread.join(timeout=40)
    assert not thread.is_alive()
    assert not failures, failures


def _sample(metrics: IngestMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_amqp_door_queues_and_stores_a_task(running_intake: IngestMetrics, rabbit: Rabbit,
                                            names: Names, settings: Settings,
                                            eventually: Callable[..., Any]) -> None:
    task_id = f"amqp-{uuid.uuid4().hex}"
    rabbit.publish(names.submit, SUBMIT_ROUTING_KEY,
                   json.dumps({"id": task_id, "prompt": "hi", "priority": 4}),
                   reply_to="my.replies")
    task = rabbit.get(names.tasks).json()
    assert (task["id"], task["reply_to"], task["priority"]) == (task_id, "my.replies", 4)
    assert task["submitted_at"] > 0
    engine = make_engine(settings.database_url)
    try:
        row = eventually(lambda: get_task(engine, "default", task_id))
    finally:
        engine.dispose()
    assert row["status"] == "queued"
    assert _sample(running_intake, "tasks_accepted_total", door="amqp") == 1


@pytest.mark.parametrize(("body", "field"), [
    (b"\x00\x01 garbage, not JSON", "body"),
    (json.dumps({"prompt": "hi", "priority": 10}).encode(), "priority"),
    (json.dumps({"messages": [{"role": "robot", "content": "x"}]}).encode(), "messages.0.role"),
])
def test_amqp_door_parks_invalid_messages(running_intake: IngestMetrics, rabbit: Rabbit,
                                          names: Names, body: bytes, field: str) -> None:
    rabbit.publish(names.submit, SUBMIT_ROUTING_KEY, body)
    parked = rabbit.get(names.rejected)
    assert parked.body == body
    assert parked.headers["x-agentq-error"].startswith(f"{field}: ")
    assert rabbit.count(names.tasks) == 0


@pytest.mark.parametrize(("body", "field"), [
    *HOSTILE_BODIES,
    # The AMQP door has the HTTP door's size limit (AGENTQ_MAX_BODY_BYTES, 1 MiB here).
    pytest.param(json.dumps({"prompt": "x" * (2 << 20)}).encode(), "body", id="2-MiB"),
])
def test_amqp_door_parks_hostile_messages_with_the_reason(
        running_intake: IngestMetrics, rabbit: Rabbit, names: Names, body: bytes,
        field: str) -> None:
    rabbit.publish(names.submit, SUBMIT_ROUTING_KEY, body)
    parked = rabbit.get(names.rejected)
    assert parked.body == body
    assert parked.headers["x-agentq-error"].startswith(f"{field}: ")
    assert rabbit.count(names.tasks) == 0


def test_amqp_door_does_not_requeue_a_duplicate(running_intake: IngestMetrics, rabbit: Rabbit,
                                                names: Names,
                                                eventually: Callable[..., Any]) -> None:
    body = json.dumps({"id": f"dup-{uuid.uuid4().hex}", "prompt": "hi"})
    rabbit.publish(names.submit, SUBMIT_ROUTING_KEY, body)
    rabbit.publish(names.submit, SUBMIT_ROUTING_KEY, body)
    # The duplicate may be counted before the first copy's publish is confirmed and counted.
    eventually(lambda: _sample(running_intake, "tasks_duplicate_total", door="amqp") == 1
               and _sample(running_intake, "tasks_accepted_total", door="amqp") == 1)
    rabbit.get(names.tasks)
    assert rabbit.count(names.tasks) == 0


class SilentBroker:
    """A TCP port that takes connections and never says a word, as a wedged RabbitMQ did
    (`channel_termination_timeout`, then no AMQP handshake completes)."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.server.getsockname()[1]}/"

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            self.accepted.append(connection)

    def close(self) -> None:
        self.server.close()
        for connection in self.accepted:
            connection.close()


def test_a_broker_that_stops_answering_gets_503s_not_500s(settings: Settings) -> None:
    silent = SilentBroker()
    try:
        with running_app(settings.model_copy(update={"amqp_url": silent.url})) as app:
            client = app.test_client()
            first = client.post("/v1/tasks", json={"id": "wedged-1", "prompt": "x"})
            assert _error(first, 503)["code"] == "unavailable"
            assert first.headers["Retry-After"]
            attempts = len(silent.accepted)
            assert attempts >= 1
            # Within the hold, requests are answered without another connection attempt.
            again = client.post("/v1/tasks", json={"id": "wedged-2", "prompt": "x"})
            assert _error(again, 503)["code"] == "unavailable"
            health = client.get("/healthz")
            assert health.status_code == 503 and health.get_json()["amqp"] is False
            assert len(silent.accepted) == attempts
            _error(client.get("/v1/tasks/wedged-1"), 404)  # nothing half-accepted is kept
    finally:
        silent.close()


# --- the crash window between storing a task and queueing it ------------------------------

def _stored_unpublished(settings: Settings, task_id: str, age_s: float) -> None:
    """What an ingest process that died after storing the row and before publishing leaves."""
    engine = make_engine(settings.database_url)
    try:
        task = parse_task({"id": task_id, "prompt": "stranded"})
        insert_task(engine, task.model_copy(update={"submitted_at": time.time() - age_s}))
    finally:
        engine.dispose()


def _stored_status(settings: Settings, task_id: str) -> str:
    engine = make_engine(settings.database_url)
    try:
        row = get_task(engine, "default", task_id)
    finally:
        engine.dispose()
    assert row is not None
    return str(row["status"])


def test_a_retry_publishes_a_task_stored_but_never_queued(
        client: FlaskClient, settings: Settings, rabbit: Rabbit, names: Names) -> None:
    _stored_unpublished(settings, "stranded-1", age_s=120)
    assert client.get("/v1/tasks/stranded-1").get_json()["status"] == "queued"
    response = client.post("/v1/tasks", json={"id": "stranded-1", "prompt": "stranded"})
    assert response.status_code == 202 and response.get_json()["status"] == "queued"
    delivered = rabbit.get(names.tasks)
    assert json.loads(delivered.body)["id"] == "stranded-1"
    assert _stored_status(settings, "stranded-1") == "queued"
    # Now published: a further retry is a plain duplicate, queued nothing more.
    client.post("/v1/tasks", json={"id": "stranded-1", "prompt": "stranded"})
    assert rabbit.count(names.tasks) == 0


def test_a_retry_of_a_task_being_queued_right_now_is_a_duplicate(
        client: FlaskClient, settings: Settings, rabbit: Rabbit, names: Names) -> None:
    _stored_unpublished(settings, "in-flight-1", age_s=0)  # its first request still publishing
    response = client.post("/v1/tasks", json={"id": "in-flight-1", "prompt": "stranded"})
    assert response.status_code == 202 and response.get_json()["status"] == "queued"
    assert rabbit.count(names.tasks) == 0


def test_the_resend_queues_what_no_client_retried(
        settings: Settings, rabbit: Rabbit, names: Names, monkeypatch: pytest.MonkeyPatch,
        eventually: Callable[..., Any]) -> None:
    monkeypatch.setattr(intake, "RESEND_INTERVAL_S", 0.2)
    monkeypatch.setattr(intake, "RESEND_AFTER_S", 30.0)
    _stored_unpublished(settings, "swept-1", age_s=120)
    _stored_unpublished(settings, "fresh-1", age_s=0)
    metrics = make_metrics(CollectorRegistry())
    stop = asyncio.Event()

    async def serve() -> None:
        asyncio.get_running_loop().call_later(3.0, stop.set)
        await intake.run(settings, stop, metrics)

    asyncio.run(serve())
    delivered = rabbit.get(names.tasks)
    assert json.loads(delivered.body)["id"] == "swept-1"
    assert rabbit.count(names.tasks) == 0  # the fresh one is left to its own request
    assert _stored_status(settings, "swept-1") == "queued"
    assert _stored_status(settings, "fresh-1") == "accepted"


@pytest.mark.parametrize(("body", "field"), [
    ({"": 1}, '""'),
    ({"a.b": 1}, '"a.b"'),
    ({"a key": 1}, '"a key"'),
    ({"prompt": "hi", "messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
    ({"prompt": "hi", "unknown_key": 1}, "unknown_key"),
])
def test_a_bad_field_is_named_even_when_its_key_is_odd(body: dict[str, object],
                                                       field: str) -> None:
    from services.ingest.validation import parse_task

    with pytest.raises(InvalidTask) as caught:
        parse_task(body)
    assert caught.value.field == field
