"""The self-hosting comparison: pure arithmetic, and its GPU figures set on /settings."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from services.common.settings import Settings
from services.dashboard.self_hosting import (
    DAYS_PER_MONTH,
    GpuPlan,
    PlanError,
    Volume,
    break_even_tasks_per_day,
    compare,
    plan_from_settings,
    replicas_needed,
    self_hosted_monthly_usd,
)
from services.dashboard.thresholds import DEFAULTS, ThresholdError, parse
from tests.dashboard_app import csrf_token, log_in, serve

PASSWORD = "gpu admin"
AUTH = {"Authorization": f"Bearer {PASSWORD}"}
# $2/GPU-hour, one GPU per replica, 1,000 tokens/s: 86.4 M tokens a day for $1,460 a month.
PLAN = GpuPlan(2.0, 1, 1000.0)


def test_a_replica_costs_its_gpus_around_the_clock() -> None:
    assert PLAN.replica_tokens_per_day == 86_400_000
    assert PLAN.replica_monthly_usd == pytest.approx(1460.0)
    assert GpuPlan(2.0, 4, 1000.0).replica_monthly_usd == pytest.approx(5840.0)


@pytest.mark.parametrize("tokens_per_day, replicas", [
    (0, 1), (1, 1), (86_400_000, 1), (86_400_001, 2), (3 * 86_400_000, 3)])
def test_replicas_step_up_when_a_day_no_longer_fits(tokens_per_day: float,
                                                    replicas: int) -> None:
    assert replicas_needed(PLAN, tokens_per_day) == replicas
    assert self_hosted_monthly_usd(PLAN, tokens_per_day) == pytest.approx(replicas * 1460.0)


def test_break_even_is_where_the_api_bill_meets_one_replica() -> None:
    # 10,000 tasks a day at $0.01 each, 1,000 tokens each: $3,042 a month on the API.
    volume = Volume(tasks_per_day=10_000, tokens_per_day=10_000_000, api_usd_per_day=100)
    even = break_even_tasks_per_day(PLAN, volume)
    assert even == pytest.approx(1460.0 / (0.01 * DAYS_PER_MONTH))  # ≈ 4,800 tasks/day
    at_even = Volume(even, even * 1000, even * 0.01)
    assert at_even.api_monthly_usd == pytest.approx(PLAN.replica_monthly_usd)
    result = compare(PLAN, volume)
    assert (result.replicas, result.gpus) == (1, 1)
    assert result.api_monthly_usd == pytest.approx(3041.67, abs=0.01)
    assert result.gpu_busy_pct == pytest.approx(10_000_000 / 86_400_000 * 100)
    assert result.cheaper == "self-hosted"


def test_no_break_even_when_a_busy_replica_costs_more_than_its_answers() -> None:
    # $0.0001 a task of 1,000 tokens: a full replica (86,400 tasks/day) earns $263/month.
    volume = Volume(tasks_per_day=1000, tokens_per_day=1_000_000, api_usd_per_day=0.1)
    assert break_even_tasks_per_day(PLAN, volume) is None
    assert compare(PLAN, volume).cheaper == "api"


@pytest.mark.parametrize("volume", [Volume(0, 0, 0), Volume(100, 10_000, 0)])
def test_no_break_even_without_traffic_or_spend_to_price_a_task(volume: Volume) -> None:
    assert break_even_tasks_per_day(PLAN, volume) is None


def test_free_gpus_break_even_at_once() -> None:
    assert break_even_tasks_per_day(GpuPlan(0.0, 1, 10.0), Volume(10, 100, 1)) == 0


def test_volume_is_the_window_scaled_to_a_day() -> None:
    volume = Volume.observed(tasks=60, tokens=6000, cost_usd=0.6, span_s=3600)
    assert (volume.tasks_per_day, volume.tokens_per_day) == (1440, 144_000)
    assert volume.api_usd_per_day == pytest.approx(14.4)
    assert volume.api_monthly_usd == pytest.approx(0.6 * 730)  # = the projected monthly spend


@pytest.mark.parametrize("args, field", [
    ((-1.0, 1, 1000.0), "self_host_gpu_hour_usd"),
    ((math.nan, 1, 1000.0), "self_host_gpu_hour_usd"),
    ((2.0, 0, 1000.0), "self_host_gpus"),
    ((2.0, 1.5, 1000.0), "self_host_gpus"),
    ((2.0, 1, 0.0), "self_host_tokens_per_s"),
    ((2.0, 1, -5.0), "self_host_tokens_per_s"),
    ((2.0, 1, math.inf), "self_host_tokens_per_s"),
])
def test_bad_plans_are_refused_naming_the_setting(args: tuple[Any, ...], field: str) -> None:
    with pytest.raises(PlanError) as info:
        GpuPlan(*args)
    assert info.value.field == field and field in str(info.value)


def test_zero_throughput_says_why() -> None:
    with pytest.raises(PlanError, match="more than 0 tokens/s"):
        GpuPlan(2.0, 1, 0)


@pytest.mark.parametrize("kwargs", [{"tasks_per_day": -1, "tokens_per_day": 0,
                                     "api_usd_per_day": 0},
                                    {"tasks_per_day": 1, "tokens_per_day": 0,
                                     "api_usd_per_day": -0.5}])
def test_negative_volumes_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(PlanError, match="0 or more"):
        Volume(**kwargs)
    with pytest.raises(PlanError, match="span_s"):
        Volume.observed(1, 1, 1, span_s=0)
    with pytest.raises(PlanError, match="tokens_per_day"):
        replicas_needed(PLAN, -1)


def test_plan_from_settings_waits_for_a_gpu_price() -> None:
    assert plan_from_settings(DEFAULTS) is None
    plan = plan_from_settings({**DEFAULTS, "self_host_gpu_hour_usd": 2.5,
                               "self_host_gpus": 2.0, "self_host_tokens_per_s": 800.0})
    assert plan == GpuPlan(2.5, 2, 800.0)


@pytest.mark.parametrize("key, raw, message", [
    ("self_host_gpu_hour_usd", "-1", "0 or more"),
    ("self_host_gpus", "0", "more than 0"),
    ("self_host_gpus", "1.5", "whole number"),
    ("self_host_tokens_per_s", "0", "more than 0"),
    ("self_host_tokens_per_s", "fast", "must be a number"),
])
def test_settings_parser_refuses_bad_gpu_figures(key: str, raw: str, message: str) -> None:
    with pytest.raises(ThresholdError, match=message) as info:
        parse(key, raw)
    assert info.value.field == key


# --- /settings and /api/thresholds, against the real database ---------------------------

@pytest.fixture
def client(settings: Settings) -> Iterator[FlaskClient]:
    app: Flask
    for app in serve(settings, PASSWORD):
        yield app.test_client()


def _post(client: FlaskClient, **changes: str) -> Any:
    values = {**client.get("/api/thresholds").get_json(), **changes}
    data = {"csrf_token": csrf_token(client.get("/settings").get_data(as_text=True))}
    data.update({k: ("y" if v is True else str(v)) for k, v in values.items() if v is not False})
    return client.post("/settings", data=data)


def test_settings_form_stores_the_gpu_figures(client: FlaskClient) -> None:
    page = client.get("/settings").get_data(as_text=True)
    for key in ("self_host_gpu_hour_usd", "self_host_gpus", "self_host_tokens_per_s"):
        assert f'name="{key}"' in page
    log_in(client, PASSWORD)
    response = _post(client, self_host_gpu_hour_usd="2.5", self_host_gpus="2",
                     self_host_tokens_per_s="1500")
    assert response.status_code == 303
    stored = client.get("/api/thresholds").get_json()
    assert (stored["self_host_gpu_hour_usd"], stored["self_host_gpus"],
            stored["self_host_tokens_per_s"]) == (2.5, 2, 1500)


def test_settings_form_names_a_bad_gpu_figure(client: FlaskClient) -> None:
    log_in(client, PASSWORD)
    response = _post(client, self_host_tokens_per_s="0")
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert 'id="error-self_host_tokens_per_s"' in page and "must be more than 0" in page
    assert client.get("/api/thresholds").get_json() == DEFAULTS


@pytest.mark.parametrize("body, field", [
    ({"self_host_gpus": 0}, "self_host_gpus"),
    ({"self_host_gpus": 2.5}, "self_host_gpus"),
    ({"self_host_gpu_hour_usd": -3}, "self_host_gpu_hour_usd"),
    ({"self_host_tokens_per_s": "lots"}, "self_host_tokens_per_s"),
])
def test_api_refuses_a_bad_gpu_figure_naming_it(client: FlaskClient, body: dict[str, Any],
                                                field: str) -> None:
    response = client.put("/api/thresholds", json=body, headers=AUTH)
    assert response.status_code == 400
    assert response.get_json()["error"]["field"] == field
    ok = client.put("/api/thresholds", json={"self_host_gpu_hour_usd": 1.2}, headers=AUTH)
    assert ok.status_code == 200 and ok.get_json()["self_host_gpu_hour_usd"] == 1.2
