"""The overview's Batches and Self-hosted cards: pure arithmetic, then store rows to page.

The batcher's tables (agentq_batch_claims, agentq_batches: docs/batches.md) and the results
store are written here as the batcher and the recorder write them, in a real database
(SQLite in tmp_path, or PostgreSQL with AGENTQ_TEST_DATABASE_URL).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import Engine, insert

from services.common import store
from services.common.models import Latency, Result, Task, Usage
from services.common.settings import Settings
from services.dashboard.batch_saving import (
    BatchedGroup,
    BatchSaving,
    batch_saving,
    batching_saving,
    live_price,
    per_month,
    tiering_apart,
)
from services.dashboard.cards import batch_cards, money, self_hosting_cards
from services.dashboard.models import db
from services.dashboard.rollup import aggregate
from services.dashboard.writer import apply_delta
from tests.dashboard_app import serve

PASSWORD = "batch admin"
AUTH = {"Authorization": f"Bearer {PASSWORD}"}


# --- pure -----------------------------------------------------------------------------------

@pytest.mark.parametrize("batch_usd, discount, live", [
    (0.5, 0.5, 1.0), (0.0, 0.5, 0.0), (0.9, 0.1, 1.0), (0.3, 0.0, 0.3)])
def test_live_price_undoes_the_batch_discount(batch_usd: float, discount: float,
                                              live: float) -> None:
    assert live_price(batch_usd, discount) == pytest.approx(live)


@pytest.mark.parametrize("batch_usd, discount, message", [
    (-0.1, 0.5, "batch_usd: must be 0 or more"), (0.1, 1.0, "discount: must be below 1"),
    (0.1, -0.2, "discount: must be 0 or more"), (math.nan, 0.5, "batch_usd: must be a finite"),
])
def test_live_price_refuses_bad_input(batch_usd: float, discount: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        live_price(batch_usd, discount)


def test_batching_saving_is_live_less_batch_never_negative() -> None:
    assert batching_saving(1.0, 0.5) == pytest.approx(0.5)
    assert batching_saving(0.4, 0.5) == 0.0
    with pytest.raises(ValueError, match="live_usd: must be 0 or more"):
        batching_saving(-1.0, 0.5)


def test_batch_saving_prices_each_provider_with_its_discount() -> None:
    groups = [BatchedGroup("openai", 10, 0.5), BatchedGroup("cheapo", 4, 0.8),
              BatchedGroup("gone", 3, 0.3), BatchedGroup("free", 2, 0.0)]
    saving = batch_saving(groups, {"openai": 0.5, "cheapo": 0.2, "free": 1.0})
    # openai: live 1.0, saved 0.5; cheapo: live 1.0, saved 0.2; gone and free: no claim.
    assert saving == BatchSaving(results=19, cost_usd=pytest.approx(1.6),
                                 live_usd=pytest.approx(2.3), saved_usd=pytest.approx(0.7),
                                 unpriced=5)
    assert batch_saving([], {}) == BatchSaving()


def test_tiering_saving_without_the_batch_discount() -> None:
    assert tiering_apart(1.0, 0.25) == pytest.approx(0.75)
    assert tiering_apart(0.1, 0.25) == 0.0


def test_per_month_scales_a_window_to_730_hours() -> None:
    assert per_month(1.0, 3600) == pytest.approx(730.0)
    with pytest.raises(ValueError, match="span_s"):
        per_month(1.0, 0)


def test_cards_say_what_is_waiting_in_flight_and_saved() -> None:
    busy, saved = batch_cards({"deferred_waiting": 1234, "in_flight": 2, "results": 50,
                               "saved_usd": 1.5, "unpriced": 3},
                              {"projected_monthly_batching_saving_usd": 730.0})
    assert (busy.value, busy.sub) == ("2 in flight", "1,234 deferred waiting")
    assert (saved.value, saved.tone) == ("$1.50", "good")
    assert saved.sub == "50 batched · ≈ $730.00/month · 3 unpriced"
    idle = batch_cards({"deferred_waiting": 0, "in_flight": 0, "results": 0,
                        "saved_usd": 0.0, "unpriced": 0}, {})
    assert [(c.value, c.sub, c.tone) for c in idle] == [
        ("0 in flight", "0 deferred waiting", ""), ("$0", "0 batched · ≈ $0/month", "")]


def test_self_hosting_cards_ask_for_a_price_then_answer() -> None:
    [unset] = self_hosting_cards({"configured": False})
    assert (unset.id, unset.sub) == ("self-hosting", "GPU price: see Settings")
    cost, even = self_hosting_cards({
        "configured": True, "self_hosted_monthly_usd": 1460.0, "api_monthly_usd": 3041.67,
        "gpus": 2, "break_even_tasks_per_day": 4800.2, "tasks_per_day": 10_000,
        "cheaper": "self-hosted"})
    assert (cost.value, cost.sub, cost.tone) == ("$1,460", "2 GPUs · API $3,042/month", "good")
    assert (even.id, even.value, even.sub) == ("break-even", "4,800", "now 10,000 tasks/day")
    _, never = self_hosting_cards({
        "configured": True, "self_hosted_monthly_usd": 1460.0, "api_monthly_usd": 5.0,
        "gpus": 1, "break_even_tasks_per_day": None, "tasks_per_day": 3, "cheaper": "api"})
    assert (never.value, never.sub, never.tone) == ("never", "busy GPU dearer than API", "")


# --- store rows to /api/metrics and the page -------------------------------------------------

@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    yield from serve(settings, PASSWORD)


@pytest.fixture
def engine(database_url: str, app: Flask) -> Iterator[Engine]:
    engine = store.make_engine(database_url)
    yield engine
    engine.dispose()


# The built-in tier table: provider "mock", gpt-4o-mini $0.15/$0.60 per M tokens, o1 (the
# premium baseline) $15/$60, batch_discount 0.5.
USAGE = Usage(prompt_tokens=100_000, completion_tokens=10_000)
LIVE_MINI = (100_000 * 0.15 + 10_000 * 0.60) / 1e6  # $0.021
PREMIUM = (100_000 * 15 + 10_000 * 60) / 1e6  # $2.10


def _result(task_id: str, tenant: str, finished_at: float, batch_id: str | None) -> Result:
    cost = LIVE_MINI / 2 if batch_id else LIVE_MINI
    return Result(task_id=task_id, tenant=tenant, status="succeeded", kind="classify",
                  tier="cheap", model="gpt-4o-mini", usage=USAGE, cost_usd=cost,
                  cost_saved_usd=PREMIUM - cost, latency_ms=Latency(queue=5, llm=10, total=15),
                  finished_at=finished_at, batch_id=batch_id, attempts=1)


def _claim(tenant: str, task_id: str, state: str, updated_at: float) -> dict[str, Any]:
    return {"tenant": tenant, "task_id": task_id, "custom_id": f"{tenant}/{task_id}",
            "provider": "mock", "model": "gpt-4o-mini", "tier": "cheap", "state": state,
            "group_id": "g1" if state != "waiting" else None,
            "batch_id": "batch_1" if state in ("submitted", "done") else None,
            "deadline_at": None, "claimed_at": updated_at - 60, "updated_at": updated_at,
            "task_json": Task(id=task_id, tenant=tenant, prompt="x", deferrable=True)
            .model_dump_json()}


def _fill(app: Flask, engine: Engine, now: float) -> None:
    """Store what a busy hour leaves: live and batched Results, claims, batches."""
    results = [_result(f"b{n}", f"t{n % 2}", now - 120, "batch_1") for n in range(6)]
    results += [_result(f"l{n}", "t0", now - 120, None) for n in range(4)]
    old = _result("b-old", "t0", now - 3 * 3600, "batch_0")  # outside the 15m window
    claims = [_claim(r.tenant, r.task_id, "done", r.finished_at + 1) for r in [*results[:6], old]]
    claims += [_claim("t0", "w1", "waiting", now - 5), _claim("t1", "w2", "waiting", now - 5),
               _claim("t1", "s1", "submitted", now - 30), _claim("t0", "u1", "uploading", now),
               _claim("t0", "v1", "live", now - 10)]
    for result in [*results, old]:
        store.insert_task(engine, Task(id=result.task_id, tenant=result.tenant, prompt="x",
                                       deferrable=result.batch_id is not None,
                                       submitted_at=result.finished_at - 60))
    store.record_results(engine, [*results, old])
    batch_row = {"provider": "mock", "model": "gpt-4o-mini", "created_at": now - 100,
                 "batch_id": None, "completed": None, "failed": None}
    with engine.begin() as conn:
        conn.execute(insert(store.batch_claims), claims)
        conn.execute(insert(store.batches), [
            {**batch_row, "group_id": "g1", "state": "submitted", "batch_id": "batch_1",
             "lines": 7},
            {**batch_row, "group_id": "g2", "state": "uploading", "lines": 1},
            {**batch_row, "group_id": "g0", "state": "ended", "batch_id": "batch_0",
             "lines": 1, "completed": 1, "failed": 0}])
    with app.app_context():  # the collector's rollups of the same Results
        apply_delta(db.session, aggregate([*results, old], []))
        db.session.commit()


def test_api_metrics_shows_batches_and_the_saving_apart(app: Flask, engine: Engine) -> None:
    now = time.time()
    _fill(app, engine, now)
    client = app.test_client()
    doc = client.get("/api/metrics?window=15m").get_json()
    batches = doc["batches"]
    assert (batches["deferred_waiting"], batches["in_flight"], batches["lines_in_flight"]) \
        == (4, 2, 8)
    assert (batches["results"], batches["unpriced"]) == (6, 0)
    assert batches["cost_usd"] == pytest.approx(6 * LIVE_MINI / 2)
    assert batches["saved_usd"] == pytest.approx(6 * LIVE_MINI / 2)
    totals = doc["totals"]
    assert totals["saved_batching_usd"] == pytest.approx(6 * LIVE_MINI / 2)
    # Tiering keeps only what the cheaper tier saved against premium, at the live price.
    assert totals["saved_tiering_usd"] == pytest.approx(10 * (PREMIUM - LIVE_MINI))
    assert totals["saved_usd"] == pytest.approx(
        totals["saved_tiering_usd"] + totals["saved_batching_usd"] + totals["saved_cache_usd"])
    monthly_saving = totals["saved_batching_usd"] / doc["span_s"] * 3600 * 730
    assert totals["projected_monthly_batching_saving_usd"] == pytest.approx(monthly_saving,
                                                                            abs=0.01)
    assert totals["projected_monthly_without_batching_usd"] == pytest.approx(
        totals["projected_monthly_usd"] + monthly_saving, abs=0.01)
    cards = {c["id"]: c for c in doc["cards"]}
    assert (cards["batches"]["value"], cards["batches"]["sub"]) == ("2 in flight",
                                                                    "4 deferred waiting")
    assert (cards["batch-saving"]["value"], cards["batch-saving"]["sub"]) == (
        "$0.06", f"6 batched · ≈ {money(totals['projected_monthly_batching_saving_usd'])}/month")
    assert "batching $0.06" in cards["savings"]["sub"]
    assert doc["self_hosting"] == {"configured": False}
    assert "break-even" not in cards and "Settings" in cards["self-hosting"]["sub"]

    only = client.get("/api/metrics?window=15m&tenant=t1").get_json()["batches"]
    assert (only["deferred_waiting"], only["results"]) == (2, 3)
    # A day's window reaches the batch of three hours ago too.
    assert client.get("/api/metrics?window=24h").get_json()["batches"]["results"] == 7


def test_nothing_batched_shows_zero_and_leaves_tiering_alone(app: Flask) -> None:
    now = time.time()
    with app.app_context():
        apply_delta(db.session, aggregate([_result("l1", "t0", now - 60, None)], []))
        db.session.commit()
    doc = app.test_client().get("/api/metrics?window=15m").get_json()
    assert doc["batches"] == {"deferred_waiting": 0, "in_flight": 0, "lines_in_flight": 0,
                              "results": 0, "cost_usd": 0, "live_usd": 0, "saved_usd": 0,
                              "unpriced": 0}
    assert doc["totals"]["saved_tiering_usd"] == pytest.approx(PREMIUM - LIVE_MINI)
    assert doc["totals"]["projected_monthly_without_batching_usd"] == pytest.approx(
        doc["totals"]["projected_monthly_usd"])


def test_self_hosting_card_uses_the_gpu_price_set_in_settings(app: Flask,
                                                              engine: Engine) -> None:
    now = time.time()
    _fill(app, engine, now)
    client = app.test_client()
    assert client.put("/api/thresholds", headers=AUTH, json={
        "self_host_gpu_hour_usd": 2.0, "self_host_gpus": 1,
        "self_host_tokens_per_s": 1000}).status_code == 200
    doc = client.get("/api/metrics?window=1h").get_json()
    # Tasks of 110,000 tokens at ~$0.015: a GPU busy all day (785 tasks) would replace
    # ~$350 of API calls a month and costs $1,460: no volume ever breaks even.
    assert doc["self_hosting"]["break_even_tasks_per_day"] is None
    assert {c["id"]: c for c in doc["cards"]}["break-even"]["value"] == "never"
    client.put("/api/thresholds", headers=AUTH, json={"self_host_tokens_per_s": 10_000})
    doc = client.get("/api/metrics?window=1h").get_json()
    figures, totals = doc["self_hosting"], doc["totals"]
    assert figures["configured"] is True
    # 10 tasks of 110,000 tokens in the window: far below one GPU's 864 M tokens a day.
    assert (figures["replicas"], figures["gpus"]) == (1, 1)
    assert figures["self_hosted_monthly_usd"] == pytest.approx(1460.0)
    assert figures["api_monthly_usd"] == pytest.approx(totals["projected_monthly_usd"], rel=1e-3)
    cost_per_task = totals["cost_usd"] / totals["tasks"]
    assert figures["break_even_tasks_per_day"] == pytest.approx(
        1460.0 / (cost_per_task * 730 / 24), rel=1e-3)
    page = client.get("/?window=1h").get_data(as_text=True)
    assert 'id="card-self-hosting"' in page and "Self-hosted per month" in page
    assert ">$1,460<" in page
    assert 'id="card-break-even"' in page
    assert 'id="card-batches"' in page and "2 in flight" in page
