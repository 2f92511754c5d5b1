"""Every branch of the router's decision table (services/router/decide.py), without a broker."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.common.budget import BudgetLevel
from services.common.cache import CachedAnswer
from services.common.config import AgentqConfig, load_config
from services.common.events import check
from services.common.models import Task, Usage
from services.common.semantic_cache import SemanticHit
from services.common.topology import ATTEMPT_HEADER, ROUTE_HEADER
from services.common.work_headers import ROUTED_TIER_HEADER, VERIFY_HEADER
from services.router.decide import (
    Answer,
    Emit,
    Found,
    Plan,
    Reject,
    Route,
    asks_exact,
    read_task,
    route_plan,
    semantic_threshold,
    tier_for,
)
from services.router.policy import RouteDecision

NOW = 1_700_000_000.0
ROUTE = RouteDecision("cheap", "kind:classify")
CACHED = CachedAnswer(output="complaint", model="gpt-4o-mini", tier="cheap",
                      usage=Usage(prompt_tokens=20, completion_tokens=2), task_id="first")
SIMILAR = SemanticHit(key="sem:1", similarity=0.9712, answer=CACHED)


def make_config(**cache: Any) -> AgentqConfig:
    raw = load_config(None).model_dump()
    raw["cache"].update(cache)
    return AgentqConfig.model_validate(raw)


def task(**fields: Any) -> Task:
    return Task.model_validate({"id": "t-1", "tenant": "acme", "kind": "classify",
                                "prompt": "Classify: late parcel. labels: complaint, praise",
                                "temperature": 0, "submitted_at": NOW - 2, **fields})


def plan_for(found: Found, level: BudgetLevel = "ok", share: float = 0.0,
             **fields: Any) -> Plan:
    return route_plan(task(**fields), ROUTE, level, found, make_config(verify_share=share), NOW)


def routed(plan: Plan) -> dict[str, Any]:
    last = plan[-1]
    assert isinstance(last, Emit) and last.type == "task.routed"
    check(last.type, dict(last.data))  # the payload its event model asks for
    return dict(last.data)


def test_a_body_that_is_not_a_task_is_rejected_with_the_reason() -> None:
    rejected = read_task(b'{"kind": 3}')
    assert isinstance(rejected, Reject) and rejected.reason.startswith("not a Task: ")
    assert isinstance(read_task(b"not json"), Reject)


def test_a_task_is_read() -> None:
    body = task().model_dump_json().encode()
    assert read_task(body) == task()


def test_no_hit_routes_to_the_tier_with_the_route_headers() -> None:
    plan = plan_for(Found())
    assert len(plan) == 2
    route = plan[0]
    assert route == Route("cheap", task(), {ROUTE_HEADER: "kind:classify", ATTEMPT_HEADER: 1,
                                            ROUTED_TIER_HEADER: "cheap"})
    assert routed(plan) == {"tier": "cheap", "reason": "kind:classify", "kind": "classify",
                            "cache": "miss"}


def test_an_exact_hit_is_answered_at_no_cost() -> None:
    plan = plan_for(Found(exact=CACHED), reply_to="amq.gen-1")
    answer = plan[0]
    assert isinstance(answer, Answer)
    assert (answer.tier, answer.cache, answer.reply_to) == ("cheap", "exact", "amq.gen-1")
    result = answer.result
    assert (result.task_id, result.tenant, result.status, result.cache) == (
        "t-1", "acme", "succeeded", "exact")
    assert (result.output, result.cost_usd, result.cached_from) == ("complaint", 0.0, "first")
    assert result.route_reason == "kind:classify"
    assert result.latency_ms.queue == pytest.approx(2000.0)
    assert result.cost_saved_usd > 0
    assert routed(plan)["cache"] == "exact"


def test_an_exact_hit_wins_over_a_semantic_one() -> None:
    plan = plan_for(Found(exact=CACHED, semantic=SIMILAR))
    assert isinstance(plan[0], Answer) and plan[0].cache == "exact"


def test_a_semantic_hit_is_answered_with_its_similarity_in_the_reason() -> None:
    plan = plan_for(Found(semantic=SIMILAR), share=0.0)
    answer = plan[0]
    assert isinstance(answer, Answer) and answer.cache == "semantic"
    assert answer.result.cache == "semantic"
    assert answer.result.route_reason == "kind:classify;semantic:0.971"
    assert routed(plan) == {"tier": "cheap", "reason": "kind:classify;semantic:0.971",
                            "kind": "classify", "cache": "semantic"}


def test_a_sampled_semantic_hit_is_routed_for_verification() -> None:
    plan = plan_for(Found(semantic=SIMILAR), share=1.0)
    route = plan[0]
    assert isinstance(route, Route) and route.tier == "cheap"
    assert route.headers[ROUTE_HEADER] == "kind:classify;verify"
    assert json.loads(route.headers[VERIFY_HEADER]) == {
        "key": "sem:1", "output": "complaint", "similarity": 0.9712}
    assert routed(plan) == {"tier": "cheap", "reason": "kind:classify;verify",
                            "kind": "classify", "cache": "miss"}


@pytest.mark.parametrize("found", [Found(), Found(exact=CACHED), Found(semantic=SIMILAR)])
def test_a_soft_budget_announces_itself_first(found: Found) -> None:
    plan = plan_for(found, level="soft")
    first = plan[0]
    assert first == Emit("budget.soft", "acme", "t-1",
                         {"tier": "cheap", "reason": "kind:classify"})
    check(first.type, dict(first.data))
    assert len(plan) == 3 and not any(
        isinstance(a, Emit) and a.type == "budget.soft" for a in plan[1:])


@pytest.mark.parametrize("level", ["ok", "hard"])
def test_no_budget_event_below_the_soft_limit_or_at_the_hard_one(level: BudgetLevel) -> None:
    # The hard limit is the worker's step (hold or fail), not the router's.
    assert [a for a in plan_for(Found(), level=level) if isinstance(a, Emit)
            and a.type.startswith("budget.")] == []


def test_the_tier_policy_hears_the_budget_level() -> None:
    config = make_config()
    reason = task(kind="summarize")
    assert tier_for(reason, config, "ok").tier == "standard"
    assert tier_for(reason, config, "soft").tier == "cheap"
    assert tier_for(task(tier="premium"), config, "ok") == RouteDecision("premium", "hint")


@pytest.mark.parametrize(("fields", "exact"), [
    ({}, True), ({"cache": "off"}, False), ({"temperature": 0.7}, False),
    ({"temperature": 0.7, "cache": "on"}, True)])
def test_which_tasks_ask_the_exact_cache(fields: dict[str, Any], exact: bool) -> None:
    assert asks_exact(task(**fields)) is exact


def test_which_tasks_ask_the_semantic_cache() -> None:
    opted = make_config(semantic_thresholds={"classify": 0.9})
    assert semantic_threshold(task(), opted) == 0.9
    assert semantic_threshold(task(), make_config()) is None  # no kind opted in
    assert semantic_threshold(task(kind="chat"), opted) is None
    assert semantic_threshold(task(temperature=0.7, cache="on"), opted) is None
    assert semantic_threshold(task(cache="off"), opted) is None
    switched_off = make_config(semantic=False, semantic_thresholds={"classify": 0.9})
    assert semantic_threshold(task(), switched_off) is None
