"""The dashboard's dead-letter page and API (/dead, /api/dead): listed without loss, replayed
by the admin only, against the real RabbitMQ and results store of the test's namespace."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from bench.stack import free_port
from services.common.dead_letters import DeadLetterQueue
from services.common.models import ErrorInfo, Result, Task
from services.common.settings import Settings
from services.common.store import get_task, insert_task, make_engine, record_results
from services.common.topology import ERROR_HEADER, Names
from services.dashboard.views.dead import quick_url, report_text
from tests.conftest import Rabbit
from tests.dashboard_app import csrf_token, log_in, serve

PASSWORD = "dead letters password"
AUTH = {"Authorization": f"Bearer {PASSWORD}"}


def _task(tenant: str) -> Task:
    return Task.model_validate({"id": f"d-{uuid.uuid4().hex[:8]}", "tenant": tenant,
                                "kind": "classify", "prompt": "hello"})


@pytest.fixture
def app(settings: Settings, names: Names) -> Iterator[Flask]:
    yield from serve(settings, PASSWORD)


@pytest.fixture
def open_app(settings: Settings, names: Names) -> Iterator[Flask]:
    yield from serve(settings, "")


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def buried(settings: Settings, names: Names, rabbit: Rabbit) -> dict[str, Task]:
    """Store three failed tasks and bury them (two acme, one beta) and one unreadable body."""
    engine = make_engine(settings.database_url)
    tasks = {"a": _task("acme"), "b": _task("acme"), "c": _task("beta")}
    reasons = {"a": "provider_unavailable: 503", "b": "timeout: 120 s",
               "c": "provider_unavailable: 502"}
    for key, task in tasks.items():
        insert_task(engine, task)
        record_results(engine, [Result(task_id=task.id, tenant=task.tenant, status="failed",
                                       error=ErrorInfo(code="provider_unavailable",
                                                       message="gave up"))])
        rabbit.publish(names.dlx, f"cheap.{reasons[key].split(':')[0]}", task.model_dump_json(),
                       headers={ERROR_HEADER: reasons[key]})
    rabbit.publish(names.dlx, "cheap.x", "{not a task", headers={ERROR_HEADER: "bad body"})
    engine.dispose()
    return tasks


def _login(client: FlaskClient) -> None:
    log_in(client, PASSWORD)


def _tasks_queued(rabbit: Rabbit, names: Names) -> list[str]:
    ids = []
    while rabbit.count(names.tasks):
        ids.append(json.loads(rabbit.get(names.tasks).body)["id"])
    return ids


def _rows(html: str) -> list[str]:
    return re.findall(r'<tr data-task="([^"]+)"', html)


# --- pure parts ----------------------------------------------------------------------------

@pytest.mark.parametrize("report, text", [
    ({"replayed": 2, "duplicates": 1, "already_succeeded": 0, "unreadable": 1,
      "not_matching": 3}, "2 replayed, 1 duplicate dropped, 3 kept (not matching), "
                          "1 kept (not a task)"),
    ({"replayed": 0, "duplicates": 2, "already_succeeded": 1, "unreadable": 0,
      "not_matching": 0}, "0 replayed, 2 duplicates dropped, 1 already succeeded (dropped)"),
])
def test_the_report_reads_as_a_sentence(report: dict[str, int], text: str) -> None:
    assert report_text(report) == text


def test_the_broker_url_gets_short_timeouts_unless_it_sets_its_own() -> None:
    url = quick_url("amqp://u:p@rabbit:5672/vh?socket_timeout=9")
    assert url.startswith("amqp://u:p@rabbit:5672/vh?")
    assert "socket_timeout=9" in url and "stack_timeout=3.0" in url
    assert "connection_attempts=1" in url and "blocked_connection_timeout=10.0" in url


# --- the page -------------------------------------------------------------------------------

def test_the_page_lists_letters_filters_and_leaves_the_queue_alone(
        client: FlaskClient, names: Names, rabbit: Rabbit, buried: dict[str, Task]) -> None:
    _login(client)
    page = client.get("/dead")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    a, b, c = buried["a"], buried["b"], buried["c"]
    assert _rows(html) == [a.id, b.id, c.id, "?"]
    assert 'id="dead-count">4 dead letters' in html
    assert f'href="/tasks/{a.id}?tenant=acme"' in html
    assert "provider_unavailable: 503" in html and "not a task" in html
    assert 'href="/dead"' in html and "Dead letters</a>" in html  # in the nav
    assert html.count('class="inline replay-one"') == 3 and "Replay all matching" in html
    assert rabbit.count(names.dead) == 4

    assert _rows(client.get("/dead?tenant=acme").get_data(as_text=True)) == [a.id, b.id]
    filtered = client.get("/dead?reason=PROVIDER&tenant=beta").get_data(as_text=True)
    assert _rows(filtered) == [c.id] and "1 dead letter matching" in filtered
    assert 'value="PROVIDER"' in filtered  # the filter stays in the form
    for tag in re.findall(r"<script\b[^>]*>", html):  # the strict CSP: no inline code
        assert "src=" in tag
    assert not re.search(r"<[^>]+\son[a-z]+\s*=", html)


def test_without_login_the_page_and_api_are_refused(client: FlaskClient,
                                                    buried: dict[str, Task]) -> None:
    page = client.get("/dead?tenant=acme")
    assert page.status_code == 302 and page.headers["Location"].startswith("/login?next=/dead")
    assert client.get("/api/dead").status_code == 401
    assert client.post("/api/dead/replay", json={}).status_code == 401
    assert client.post("/dead/replay", data={"scope": "matching"}).status_code == 302
    assert client.get("/api/dead", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_replay_one_then_all_matching_then_again(
        settings: Settings, client: FlaskClient, names: Names, rabbit: Rabbit,
        buried: dict[str, Task]) -> None:
    a, b, c = buried["a"], buried["b"], buried["c"]
    _login(client)
    token = csrf_token(client.get("/dead").get_data(as_text=True))

    done = client.post("/dead/replay?tenant=acme", data={
        "csrf_token": token, "scope": "one", "task_id": a.id, "tenant": "acme"})
    assert done.status_code == 303 and done.headers["Location"] == "/dead?tenant=acme"
    assert _tasks_queued(rabbit, names) == [a.id]
    shown = client.get(done.headers["Location"]).get_data(as_text=True)
    assert "1 replayed, 2 kept (not matching), 1 kept (not a task)" in shown
    assert _rows(shown) == [b.id]  # a's letter is gone, b's stays
    engine = make_engine(settings.database_url)
    row = get_task(engine, "acme", a.id)
    assert row is not None and row["status"] == "queued"

    # Every letter whose reason mentions "provider", whichever tenant: only c is left of those.
    done = client.post("/dead/replay?reason=provider", data={
        "csrf_token": token, "scope": "matching", "reason": "provider", "tenant": ""})
    assert done.status_code == 303
    assert _tasks_queued(rabbit, names) == [c.id]
    shown = client.get(done.headers["Location"]).get_data(as_text=True)
    assert "1 replayed, 1 kept (not matching), 1 kept (not a task)" in shown
    assert [x.task_id for x in DeadLetterQueue(settings.amqp_url, names).list()] == [b.id, "?"]

    again = client.post("/dead/replay", data={
        "csrf_token": token, "scope": "one", "task_id": a.id, "tenant": "acme"})
    assert "0 replayed" in client.get(again.headers["Location"]).get_data(as_text=True)
    assert _tasks_queued(rabbit, names) == []
    engine.dispose()


def test_a_replay_without_csrf_token_or_task_id_is_refused(
        client: FlaskClient, names: Names, rabbit: Rabbit, buried: dict[str, Task]) -> None:
    _login(client)
    no_token = client.post("/dead/replay", data={"scope": "matching"})
    assert no_token.status_code == 400 and "Nothing was replayed" in no_token.get_data(True)
    token = csrf_token(client.get("/dead").get_data(as_text=True))
    # A single replay that names no task must never become "replay everything".
    nameless = client.post("/dead/replay", data={"csrf_token": token, "scope": "one",
                                                 "task_id": "", "tenant": "acme"})
    assert nameless.status_code == 400
    assert client.post("/dead/replay", data={"csrf_token": token,
                                             "scope": "all"}).status_code == 400
    assert rabbit.count(names.dead) == 4 and _tasks_queued(rabbit, names) == []


def test_without_a_password_the_page_shows_but_nobody_replays(
        open_app: Flask, names: Names, rabbit: Rabbit, buried: dict[str, Task]) -> None:
    client = open_app.test_client()
    page = client.get("/dead")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and len(_rows(html)) == 4
    assert 'id="replay-locked"' in html and "AGENTQ_DASHBOARD_PASSWORD" in html
    assert "replay-one" not in html and "Replay all matching" not in html
    assert client.post("/dead/replay", data={"scope": "matching"}).status_code == 403
    refused = client.post("/api/dead/replay", json={})
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "replay_locked"
    assert len(client.get("/api/dead").get_json()["dead_letters"]) == 4
    assert rabbit.count(names.dead) == 4 and _tasks_queued(rabbit, names) == []


def test_the_api_lists_and_replays_with_the_bearer_password(
        client: FlaskClient, names: Names, rabbit: Rabbit, buried: dict[str, Task]) -> None:
    a, b, c = buried["a"], buried["b"], buried["c"]
    listed = client.get("/api/dead?tenant=acme", headers=AUTH)
    assert listed.status_code == 200 and listed.headers["Cache-Control"] == "no-store"
    doc = listed.get_json()
    assert doc["count"] == 2 and [x["task_id"] for x in doc["dead_letters"]] == [a.id, b.id]
    assert doc["dead_letters"][0]["reason"] == "provider_unavailable: 503"

    bad = client.post("/api/dead/replay", headers=AUTH, json={"tenant": 3})
    assert bad.status_code == 400 and bad.get_json()["error"]["field"] == "tenant"
    assert client.post("/api/dead/replay", headers=AUTH, json=["x"]).status_code == 400

    report = client.post("/api/dead/replay", headers=AUTH,
                         json={"reason": "timeout", "tenant": "acme"}).get_json()
    assert report["replayed"] == 1 and report["task_ids"] == [b.id]
    assert report["not_matching"] == 2 and report["unreadable"] == 1
    assert _tasks_queued(rabbit, names) == [b.id]
    again = client.post("/api/dead/replay", headers=AUTH, json={"task_id": b.id}).get_json()
    assert again["replayed"] == 0
    one = client.post("/api/dead/replay", headers=AUTH,
                      json={"task_id": c.id, "tenant": "beta"}).get_json()
    assert one["task_ids"] == [c.id] and _tasks_queued(rabbit, names) == [c.id]
    assert [x["task_id"] for x in client.get("/api/dead", headers=AUTH).get_json()[
        "dead_letters"]] == [a.id, "?"]


def test_an_unreachable_broker_is_a_503_page_never_a_500(app: Flask,
                                                         client: FlaskClient) -> None:
    names = Names(app.extensions["agentq.settings"].namespace)
    app.extensions["agentq.dead_letters"] = DeadLetterQueue(
        quick_url(f"amqp://guest:guest@127.0.0.1:{free_port()}/"), names)
    _login(client)
    page = client.get("/dead")
    assert page.status_code == 503
    html = page.get_data(as_text=True)
    assert 'id="broker-down"' in html and "RabbitMQ is unreachable" in html
    api = client.get("/api/dead")
    assert api.status_code == 503 and api.get_json()["error"]["code"] == "broker_unavailable"
    assert client.post("/api/dead/replay", headers=AUTH, json={}).status_code == 503
    token = csrf_token(html)
    replay = client.post("/dead/replay", data={"csrf_token": token, "scope": "matching"})
    assert replay.status_code == 303
    assert "RabbitMQ unreachable" in client.get("/dead").get_data(as_text=True)
