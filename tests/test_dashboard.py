"""The dashboard: pages, metrics API, thresholds, CSRF and login, alerts, against a real DB.

The database is SQLite in tmp_path, or a PostgreSQL schema of its own when
AGENTQ_TEST_DATABASE_URL is set (the shared `database_url` fixture).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.common.models import ErrorInfo, Event, Latency, Result, Task, Usage
from services.common.settings import Settings
from services.common.store import insert_task, make_engine, record_results
from services.common.topology import Names
from services.dashboard import alert_store, snapshot, suggestion
from services.dashboard.evaluator import Evaluator
from services.dashboard.histogram import bucket_of, bucket_range, merge, percentile
from services.dashboard.models import AlertEvent, QueueSample, QueueStat, Rollup, db
from services.dashboard.queries import SUMMED, WINDOWS
from services.dashboard.rollup import aggregate, bin_start
from services.dashboard.thresholds import DEFAULTS, ThresholdError, parse
from services.dashboard.writer import QueueReading, apply_delta, prune, record_readings
from tests.dashboard_app import csrf_token, log_in, serve

PASSWORD = "correct horse"
CHART_IDS = ("chart-throughput", "chart-queue-depth", "chart-latency", "chart-cost",
             "chart-cache", "chart-tiers", "chart-limiter")


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    """Yield the dashboard with an admin password set."""
    yield from serve(settings, PASSWORD)


@pytest.fixture
def locked_app(settings: Settings) -> Iterator[Flask]:
    """Yield the dashboard without a password: read-only, settings locked."""
    yield from serve(settings, "")


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def _write(app: Flask, results: list[Result] = (), events: list[Event] = (),  # type: ignore[assignment]
           readings: list[QueueReading] | None = None, at: float | None = None) -> None:
    """Feed messages through the collector's own aggregation and writer."""
    with app.app_context():
        session: Session = db.session
        apply_delta(session, aggregate(results, events))
        if readings is not None:
            record_readings(session, at or time.time(), readings)
        session.commit()


def _result(n: int, now: float, **overrides: Any) -> Result:
    fields: dict[str, Any] = {
        "task_id": f"t-{n}", "tenant": f"tenant-{n % 2}", "status": "succeeded",
        "kind": "classify", "tier": "cheap", "model": "gpt-4o-mini", "cost_usd": 0.001,
        "cost_saved_usd": 0.004, "usage": Usage(prompt_tokens=100, completion_tokens=20),
        "latency_ms": Latency(queue=50, llm=100 * (n + 1), total=100 * (n + 1) + 50),
        "finished_at": now - 90, "attempts": 1, "output": f"answer {n}"}
    fields.update(overrides)
    return Result(**fields)


def _login(client: FlaskClient) -> None:
    log_in(client, PASSWORD)


def _form(client: FlaskClient, **changes: Any) -> dict[str, Any]:
    """Return the settings form as a browser would post it, with `changes` applied."""
    values = {k: v for k, v in client.get("/api/thresholds").get_json().items()}
    values.update(changes)
    data = {"csrf_token": csrf_token(client.get("/settings").get_data(as_text=True))}
    for key, value in values.items():
        if isinstance(value, bool):
            if value:
                data[key] = "y"  # an unchecked box is simply absent
        else:
            data[key] = str(value)
    return data


# --- pages -------------------------------------------------------------------------------

@pytest.mark.parametrize("path, needles", [
    ("/", ("Overview", *CHART_IDS, 'id="alert-banner"', 'id="window-select"', "Throughput",
           "Cost per hour", "Cache hit rate", "/vendor/plotly.min.js")),
    ("/tasks", ("Tasks", 'id="task-search"', "No tasks match")),
    ("/alerts", ("Alerts", "Queue depth", "Dead letters", 'id="alert-history"')),
    ("/settings", ("Settings", 'name="queue_depth"', 'name="queue_depth_for_s"', 'id="save"')),
    ("/login", ("Admin login", 'name="password"')),
    ("/api/thresholds", ('"queue_depth"',)),
    ("/metrics", ("agentq_workers_online", "agentq_dashboard_info")),
])
def test_every_page_answers_with_its_content(client: FlaskClient, path: str,
                                             needles: tuple[str, ...]) -> None:
    if path == "/tasks":
        _login(client)  # prompts and outputs are the admin's once a password is set
    response = client.get(path)
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    for needle in needles:
        assert needle in body, f"{needle!r} missing from {path}"


def test_plotly_is_served_locally(client: FlaskClient) -> None:
    response = client.get("/vendor/plotly.min.js")
    assert response.status_code == 200 and b"plotly" in response.data[:2000].lower()
    assert "cdn" not in client.get("/").get_data(as_text=True).lower()


def test_api_metrics_reflects_rolled_up_results_and_events(app: Flask,
                                                           client: FlaskClient) -> None:
    now = time.time()
    names = Names(app.extensions["agentq.settings"].namespace)
    results = [_result(n, now) for n in range(8)]
    results += [_result(8, now, status="failed", cost_usd=0.0, cost_saved_usd=0.0,
                        error=ErrorInfo(code="timeout", message="slow")),
                _result(9, now, cache="exact", cost_usd=0.0, tier="standard",
                        latency_ms=Latency(queue=5, llm=0, total=5))]
    events = [
        Event(type="task.retry", ts=now - 20, tenant="tenant-0", data={"tier": "cheap"}),
        Event(type="task.dead", ts=now - 20, tenant="tenant-0", data={"tier": "cheap"}),
        Event(type="limiter.stats", ts=now - 20, data={
            "pool": "mock", "rpm_used": 300, "rpm_limit": 600, "tpm_used": 10, "tpm_limit": 100,
            "grants": 5, "waits": 1, "holds": 0, "rate_limited_429": 1}),
        Event(type="worker.heartbeat", ts=now - 1, data={
            "worker_id": "w1", "tiers": ["cheap"], "in_flight": 3, "concurrency": 8}),
        Event(type="scale.up", ts=now - 10, data={"from": 1, "to": 2, "reason": "backlog"}),
        Event(type="something.new", ts=now - 10, data={"x": 1}),  # tolerated, ignored
    ]
    _write(app, results, events, [QueueReading(names.work_queue("cheap"), 42, 1),
                                  QueueReading(names.tasks, 3, 1)], now - 2)

    doc = client.get("/api/metrics?window=15m").get_json()
    totals = doc["totals"]
    assert (totals["tasks"], totals["succeeded"], totals["failed"]) == (10, 9, 1)
    assert totals["error_rate_pct"] == pytest.approx(10.0)
    assert totals["cost_usd"] == pytest.approx(0.008)
    assert totals["saved_cache_usd"] == pytest.approx(0.004)
    assert totals["saved_tiering_usd"] == pytest.approx(0.032)
    assert totals["cache_hit_rate_pct"] == pytest.approx(10.0)
    assert (totals["retries"], totals["dead"], totals["rate_limited"]) == (1, 1, 1)
    assert totals["prompt_tokens"] == 1000
    assert doc["tier_mix"] == {"cheap": 9, "standard": 1, "premium": 0}
    assert doc["workers"]["online"] == 1 and doc["workers"]["in_flight"] == 3
    assert doc["limiter"]["mock"]["util_pct_avg"] == pytest.approx(50.0)
    assert doc["backlog"] == 45
    assert {q["name"]: q["depth"] for q in doc["queues"]}[names.work_queue("cheap")] == 42
    assert len(doc["scale_events"]) == 1
    assert [c["id"] for c in doc["cards"]][:3] == ["throughput", "error-rate", "latency"]
    # LLM latencies are 100..900 ms (the cache hit calls no model): p50 is the 5th of 9.
    lower, upper = bucket_range(bucket_of(500))
    assert lower <= doc["latency_ms"]["llm"]["p50"] < upper
    assert len(doc["series"]["t"]) == 16
    assert sum(doc["series"]["succeeded_per_min"]) == pytest.approx(9)

    only = client.get("/api/metrics?window=15m&tenant=tenant-1").get_json()
    assert only["totals"]["tasks"] == 5

    for window in ("1h", "24h", "7d"):
        assert client.get(f"/api/metrics?window={window}").get_json()["totals"]["tasks"] == 10
    bad = client.get("/api/metrics?window=3y")
    assert bad.status_code == 400 and bad.get_json()["error"]["field"] == "window"

    page = client.get("/?window=15m").get_data(as_text=True)
    assert "10.0 %" in page and "tenant-0" in page
    prom = client.get("/metrics").get_data(as_text=True)
    assert f'agentq_queue_depth{{queue="{names.work_queue("cheap")}"}} 42.0' in prom


def test_tasks_page_searches_and_shows_one_task(app: Flask, client: FlaskClient,
                                                database_url: str) -> None:
    engine = make_engine(database_url)
    now = time.time()
    tasks = [Task(id=f"job-{n}", tenant="acme" if n < 3 else "globex", kind="summarize",
                  prompt=f"summarize report {n}", submitted_at=now - 60 + n) for n in range(5)]
    for task in tasks:
        insert_task(engine, task)
    record_results(engine, [_result(0, now, task_id="job-0", tenant="acme",
                                    output="THE SUMMARY", route_reason="kind=summarize")])
    engine.dispose()

    _login(client)
    listing = client.get("/tasks?tenant=acme").get_data(as_text=True)
    assert "job-0" in listing and "job-2" in listing and "job-4" not in listing
    assert "job-0" in client.get("/tasks?status=succeeded").get_data(as_text=True)
    assert "job-1" not in client.get("/tasks?status=succeeded").get_data(as_text=True)
    assert "job-3" in client.get("/tasks?id=job-3").get_data(as_text=True)
    detail = client.get("/tasks/job-0").get_data(as_text=True)
    for needle in ("THE SUMMARY", "kind=summarize", "Queue wait", "Model call",
                   "summarize report 0", "gpt-4o-mini"):
        assert needle in detail
    assert client.get("/tasks/nope").status_code == 404


# --- thresholds: API, form, CSRF, login ----------------------------------------------------

AUTH = {"Authorization": f"Bearer {PASSWORD}"}


@pytest.mark.parametrize("body, field, fragment", [
    ({"queue_depth": -5}, "queue_depth", "0 or more"),
    ({"latency_p95": "fast"}, "latency_p95", "must be a number"),
    ({"error_rate": 250}, "error_rate", "at most 100"),
    ({"queue_depth_enabled": "maybe"}, "queue_depth_enabled", "true or false"),
    ({"no_such_rule": 1}, "no_such_rule", "unknown setting"),
    ({"webhook_url": "ftp://x"}, "webhook_url", "http"),
    ({"hysteresis": 2}, "hysteresis", "at most 0.9"),
])
def test_put_thresholds_rejects_bad_values(client: FlaskClient, body: dict[str, Any],
                                           field: str, fragment: str) -> None:
    response = client.put("/api/thresholds", json=body, headers=AUTH)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "invalid_threshold" and error["field"] == field
    assert fragment in error["message"]
    assert client.get("/api/thresholds").get_json() == DEFAULTS


def test_put_thresholds_needs_the_admin(client: FlaskClient, locked_app: Flask) -> None:
    assert client.put("/api/thresholds", json={"queue_depth": 5}).status_code == 401
    assert client.put("/api/thresholds", json={"queue_depth": 5},
                      headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.put("/api/thresholds", data="{nope", headers=AUTH).status_code == 400
    response = client.put("/api/thresholds", json={"queue_depth": 5, "queue_depth_for_s": 0},
                          headers=AUTH)
    assert response.status_code == 200 and response.get_json()["queue_depth"] == 5
    assert client.get("/api/thresholds").get_json()["queue_depth_for_s"] == 0
    locked = locked_app.test_client().put("/api/thresholds", json={"queue_depth": 1},
                                          headers=AUTH)
    assert locked.status_code == 403 and locked.get_json()["error"]["code"] == "settings_locked"


def test_settings_form_saves_after_login(client: FlaskClient) -> None:
    anonymous = client.post("/settings", data=_form(client, queue_depth="7"))
    assert anonymous.status_code == 302 and "/login" in anonymous.headers["Location"]
    assert client.get("/api/thresholds").get_json()["queue_depth"] == 1000

    _login(client)
    response = client.post("/settings", data=_form(client, queue_depth="7",
                                                   dead_letters_enabled=False))
    assert response.status_code == 303
    stored = client.get("/api/thresholds").get_json()
    assert stored["queue_depth"] == 7 and stored["dead_letters_enabled"] is False
    assert "Thresholds saved" in client.get("/settings").get_data(as_text=True)


@pytest.mark.parametrize("field, value, message", [
    ("queue_depth", "-1", "must be 0 or more"),
    ("cost_per_hour", "ten dollars", "must be a number, not &#39;ten dollars&#39;"),
    ("queue_growth_for_s", "", "must be a number (it is empty)"),
])
def test_settings_form_explains_bad_values(client: FlaskClient, field: str, value: str,
                                           message: str) -> None:
    _login(client)
    response = client.post("/settings", data=_form(client, **{field: value}))
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert f'id="error-{field}"' in page and message in page
    assert client.get("/api/thresholds").get_json() == DEFAULTS


def test_settings_post_without_csrf_token_is_refused(client: FlaskClient) -> None:
    _login(client)
    data = _form(client, queue_depth="3")
    del data["csrf_token"]
    response = client.post("/settings", data=data)
    assert response.status_code == 400
    assert 'id="csrf-error"' in response.get_data(as_text=True)
    assert client.get("/api/thresholds").get_json()["queue_depth"] == 1000


def test_locked_dashboard_shows_settings_read_only(locked_app: Flask) -> None:
    client = locked_app.test_client()
    page = client.get("/settings").get_data(as_text=True)
    assert "Settings locked" in page and 'id="save" class="btn" disabled' in page
    assert client.post("/settings", data={"queue_depth": "1"}).status_code == 403


# --- alerts: evaluator against the database, webhook ----------------------------------------

class _Hook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        length = int(self.headers["Content-Length"])
        _Hook.received.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    _Hook.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()


def test_evaluator_fires_banner_and_webhook_then_resolves(app: Flask, client: FlaskClient,
                                                          webhook: str) -> None:
    names = Names(app.extensions["agentq.settings"].namespace)
    client.put("/api/thresholds", headers=AUTH, json={
        "queue_depth": 100, "queue_depth_for_s": 10, "webhook_url": webhook})
    with app.app_context():
        evaluator = Evaluator(db.engine, names)
    start = time.time()
    deep = [QueueReading(names.work_queue("cheap"), 500, 0)]

    _write(app, readings=deep, at=start)
    evaluator.run_once(start)
    assert 'data-rule="queue_depth"' not in client.get("/").get_data(as_text=True)  # pending
    _write(app, readings=deep, at=start + 11)
    evaluator.run_once(start + 11)
    page = client.get("/alerts").get_data(as_text=True)
    assert re.search(r'<div id="alert-banner"[^>]*role="alert"\s*>', page)  # not hidden
    assert 'data-rule="queue_depth" data-state="firing"' in page
    assert client.get("/api/alerts").get_json()["alerts"][0]["rule"] == "queue_depth"
    assert len(_Hook.received) == 1 and "FIRING: Queue depth 500" in _Hook.received[0]["text"]

    # The evaluator reads thresholds each run: raising it makes the alert resolve, no restart.
    client.put("/api/thresholds", headers=AUTH, json={"queue_depth": 10_000})
    for offset in (22, 33):
        _write(app, readings=deep, at=start + offset)
        evaluator.run_once(start + offset)
    assert client.get("/api/alerts").get_json()["alerts"] == []
    assert "RESOLVED" in _Hook.received[-1]["text"]
    with app.app_context():
        changes = [(e.from_state, e.to_state) for e in db.session.scalars(
            select(AlertEvent).order_by(AlertEvent.id))]
    assert changes == [("ok", "pending"), ("pending", "firing"), ("firing", "resolving"),
                       ("resolving", "ok")]
    assert "resolving" in client.get("/alerts").get_data(as_text=True)


def test_unreachable_webhook_never_breaks_the_evaluator(app: Flask, client: FlaskClient) -> None:
    names = Names(app.extensions["agentq.settings"].namespace)
    client.put("/api/thresholds", headers=AUTH, json={
        "dead_letters": 0, "webhook_url": "http://127.0.0.1:9/unreachable"})
    now = time.time()
    _write(app, readings=[QueueReading(names.dead, 2, 0)], at=now)
    with app.app_context():
        changes = Evaluator(db.engine, names).run_once(now)
        assert alert_store.load_statuses(db.session)["dead_letters"].state == "firing"
    assert [c.notice for c in changes] == ["firing"]


def test_suggested_workers_follow_the_autoscaler_policy(app: Flask, client: FlaskClient) -> None:
    assert "suggested_workers" not in client.get("/api/metrics").get_json()  # nothing seen yet
    names = Names(app.extensions["agentq.settings"].namespace)
    now = time.time()
    # One worker of concurrency 10 with ~1 s calls does ~10 tasks/s (the median comes from
    # histogram buckets, so a little over 1 s); 900 ready tasks should be gone within the
    # policy's 60 s drain time: 2 workers for those, plus 1 for the 10 in hand.
    results = [_result(n, now, latency_ms=Latency(queue=5, llm=1000, total=1005),
                       finished_at=now - 30) for n in range(5)]
    heartbeat = Event(type="worker.heartbeat", ts=now - 1, data={
        "worker_id": "w1", "tiers": ["cheap"], "in_flight": 10, "concurrency": 10})
    _write(app, results, [heartbeat], [QueueReading(names.work_queue("cheap"), 900, 1)],
           now - 2)
    doc = client.get("/api/metrics").get_json()
    assert doc["suggested_workers"] == suggestion.suggest(doc, limiter_rpm=0) == 3
    assert doc["cards"][-1]["id"] == "suggested"
    # A provider budget of 300 RPM (5 calls/s) cannot even keep one such worker busy.
    assert suggestion.suggest(doc, limiter_rpm=300) == 1


# --- pure parts ------------------------------------------------------------------------------

def test_the_filling_bin_is_shown_as_a_rate_not_a_drop() -> None:
    now = 1_000_000_040.0  # 20 s into a minute
    window = WINDOWS["15m"]
    current = bin_start(now, 60)
    row = {"ts": current, "status": "succeeded", "tier": "cheap", **dict.fromkeys(SUMMED, 0)}
    row.update(count=10, cost_usd=0.01)
    raw = snapshot.Raw(window=window, now=now, namespace="ns", rollups=[row], latency=[],
                       queue_points=[], latest={}, queues=[], limiter=[], workers=[],
                       scale_events=[], tenants=[], alerts=[])
    doc = snapshot.build(raw)
    assert doc["series"]["succeeded_per_min"][-1] == pytest.approx(30.0)  # 10 in 20 s
    assert doc["series"]["cost_per_hour"][-1] == pytest.approx(1.8)
    assert doc["totals"]["tasks"] == 10 and doc["totals"]["throughput_now_per_min"] == 30.0


@pytest.mark.parametrize("value, bucket", [(0, 0), (-3, 0), (0.5, 0), (1, 1), (1.2, 1),
                                           (1.26, 2), (10, 11), (999_999, 60), (2e6, 61)])
def test_latency_buckets_are_log_spaced(value: float, bucket: int) -> None:
    assert bucket_of(value) == bucket
    lower, upper = bucket_range(bucket)
    assert lower <= max(value, 0) < upper


def test_percentiles_merge_exactly_across_minutes() -> None:
    minute_a = {bucket_of(v): 1 for v in (10, 20, 30)}
    minute_b: dict[int, int] = {}
    for v in [40, 50, 60, 70, 80, 90, 2000]:
        minute_b[bucket_of(v)] = minute_b.get(bucket_of(v), 0) + 1
    merged = merge([minute_a, minute_b])
    assert sum(merged.values()) == 10
    p50, p99 = percentile(merged, 0.5), percentile(merged, 0.99)
    assert p50 is not None and bucket_of(p50) in (bucket_of(50), bucket_of(50) - 1)
    assert p99 is not None and bucket_of(2000) == bucket_of(p99)
    assert percentile({}, 0.5) is None


@pytest.mark.parametrize("key, raw, expected", [
    ("queue_depth", "12.5", 12.5), ("queue_depth", 3, 3.0), ("queue_depth_enabled", "on", True),
    ("queue_depth_enabled", False, False), ("webhook_url", " ", ""),
])
def test_threshold_parsing(key: str, raw: Any, expected: Any) -> None:
    assert parse(key, raw) == expected


@pytest.mark.parametrize("key, raw", [("queue_depth", True), ("queue_depth", "nan"),
                                      ("queue_depth", None), ("webhook_url", 5)])
def test_threshold_parsing_refuses(key: str, raw: Any) -> None:
    with pytest.raises(ThresholdError):
        parse(key, raw)


def test_prune_drops_old_raw_samples_and_keeps_rollups(app: Flask) -> None:
    now = time.time()
    _write(app, readings=[QueueReading("q", 7, 1)], at=now - 3 * 86_400)
    _write(app, readings=[QueueReading("q", 9, 1)], at=now)
    with app.app_context():
        prune(db.session, now)
        db.session.commit()
        depths = db.session.scalars(select(QueueSample.depth)).all()
        peaks = db.session.scalars(select(QueueStat.max_depth).where(QueueStat.res == 3600)
                                   .order_by(QueueStat.ts)).all()
    assert depths == [9] and peaks == [7, 9]


def test_rollups_are_additive_across_batches(app: Flask) -> None:
    now = time.time()
    _write(app, [_result(1, now)])
    _write(app, [_result(3, now)])  # same tenant, kind, tier, status and minute
    with app.app_context():
        rows = db.session.scalars(select(Rollup).where(Rollup.res == 60)).all()
    assert [(r.tenant, r.count) for r in rows] == [("tenant-1", 2)]
    assert rows[0].cost_usd == pytest.approx(0.002)


def test_sampled_semantic_wrong_hits_fire_an_alert_and_show_beside_the_savings(
        app: Flask, client: FlaskClient) -> None:
    names = Names(app.extensions["agentq.settings"].namespace)
    client.put("/api/thresholds", headers=AUTH, json={
        "semantic_wrong_hits": 5, "semantic_wrong_hits_for_s": 0})
    now = time.time()

    def verify(n: int, agreed: bool) -> Event:
        return Event(type="cache.verify", ts=now - 5, service="worker", tenant="acme",
                     task_id=f"v-{n}", data={"tier": "cheap", "kind": "classify",
                                             "agreed": agreed, "similarity": 0.93})

    # 2 of 20 sampled hits disagreed: 10 %, above the 5 % set in the UI.
    _write(app, results=[_result(n, now) for n in range(20)],
           events=[verify(n, agreed=n >= 2) for n in range(20)])
    with app.app_context():
        Evaluator(db.engine, names).run_once(now)
        status = alert_store.load_statuses(db.session)["semantic_wrong_hits"]
    assert status.state == "firing" and status.value == pytest.approx(10.0)
    totals = client.get("/api/metrics").get_json()["totals"]
    assert totals["semantic_verified"] == 20
    assert totals["semantic_wrong_hit_pct"] == pytest.approx(10.0)
    page = client.get("/").get_data(as_text=True)
    assert "semantic wrong hits 10" in page and "of 20 sampled" in page
