"""Every branch of the worker's decision table (services/worker/decide.py), without a broker."""

from __future__ import annotations

import json
import random
from typing import Any, TypeVar

import pytest

from services.common.cache import CachedAnswer
from services.common.config import AgentqConfig
from services.common.cost_config import BudgetConfig
from services.common.events import check
from services.common.models import Latency, Result, Task, Usage
from services.common.topology import ATTEMPT_HEADER, ERROR_HEADER, ROUTE_HEADER
from services.common.work_headers import (
    CASCADE_HEADER,
    HELD_HEADER,
    RATE_WAIT_HEADER,
    ROUTED_TIER_HEADER,
    VERIFY_HEADER,
)
from services.worker.actions import (
    Call,
    Charge,
    Dead,
    Emit,
    Escalate,
    Hold,
    Plan,
    Publish,
    Reject,
    Release,
    Remember,
    Retry,
    Verify,
    WorkOrder,
)
from services.worker.cascade import CascadeState
from services.worker.decide import (
    Answer,
    CallFailure,
    RetryPolicy,
    answer_plan,
    answer_result,
    budget_plan,
    call_latency,
    dedups,
    failure_plan,
    rate_wait_since,
    read_order,
    twin_plan,
)

T = TypeVar("T")
NOW = 1_700_000_000.0
POLICY = RetryPolicy(max_attempts=3, base_ms=500, max_ms=30_000)
LATENCY = Latency(queue=1.0, llm=2.0, limiter=0.5, total=4.0)


def config(**extra: Any) -> AgentqConfig:
    def tier(model: str, price: float) -> dict[str, Any]:
        return {"models": [{"provider": "mock", "model": model, "input_per_mtok": price,
                            "output_per_mtok": price * 4}]}
    return AgentqConfig.model_validate({
        "providers": {"mock": {"base_url": "http://127.0.0.1:1/v1"}},
        "tiers": {"cheap": tier("small", 1.0), "standard": tier("medium", 10.0),
                  "premium": tier("large", 100.0)},
        **extra})


CONFIG = config()


def order(tier: str = "cheap", attempt: int = 1, headers: dict[str, Any] | None = None,
          **task: Any) -> WorkOrder:
    fields = {"id": "t1", "tenant": "acme", "kind": "classify", "prompt": "Classify: hi",
              "reply_to": "amq.gen-reply", "submitted_at": NOW - 2, **task}
    return WorkOrder(Task.model_validate(fields), tier, attempt,
                     {ROUTE_HEADER: "kind:classify", ROUTED_TIER_HEADER: tier,
                      **(headers or {})})


def events(plan: Plan) -> list[str]:
    """Return the types of the events a plan emits, each checked against its model."""
    emits = [action for action in plan if isinstance(action, Emit)]
    for emit in emits:
        check(emit.type, emit.data)
    return [emit.type for emit in emits]


def kinds(plan: Plan) -> list[type]:
    """Return the kinds of a plan's actions (its events checked against their models)."""
    events(plan)
    return [type(action) for action in plan]


def first(plan: Plan, kind: type[T]) -> T:
    found = [action for action in plan if isinstance(action, kind)]
    assert found, f"no {kind.__name__} in {plan}"
    return found[0]


# -- receive ---------------------------------------------------------------------------------

def test_a_work_message_reads_as_an_order_from_a_lane_or_the_tier_queue() -> None:
    body = Task(id="a", prompt="hi").model_dump_json().encode()
    read = read_order(body, "standard.acme", {ATTEMPT_HEADER: 3})
    assert isinstance(read, WorkOrder)
    assert (read.tier, read.attempt, read.task.id) == ("standard", 3, "a")
    assert isinstance(tier_queue := read_order(body, "cheap", None), WorkOrder)
    assert tier_queue.attempt == 1


@pytest.mark.parametrize(("body", "key", "headers", "says"), [
    (b"not json", "cheap", {}, "not a Task"),
    (b'{"kind": "chat"}', "cheap", {}, "not a Task"),
    (Task(prompt="hi").model_dump_json().encode(), "gold.acme", {}, "unknown tier 'gold'"),
    (Task(prompt="hi").model_dump_json().encode(), "cheap", {ATTEMPT_HEADER: "x"},
     "not a number"),
])
def test_a_message_that_can_never_run_is_rejected_with_the_reason(
        body: bytes, key: str, headers: dict[str, Any], says: str) -> None:
    read = read_order(body, key, headers)
    assert isinstance(read, Reject)
    assert says in read.reason


def test_the_rate_wait_start_is_read_from_its_header_or_absent() -> None:
    assert rate_wait_since({RATE_WAIT_HEADER: "12.5"}) == 12.5
    assert rate_wait_since({RATE_WAIT_HEADER: "soon"}) is None
    assert rate_wait_since({}) is None


# -- budget ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("budget", "level"), [
    (None, "hard"),
    (BudgetConfig(daily_hard_usd=1.0), "ok"),
    (BudgetConfig(daily_hard_usd=1.0), "soft"),
])
def test_a_task_within_its_budget_goes_on_to_the_call(budget: BudgetConfig | None,
                                                      level: str) -> None:
    assert budget_plan(order(), budget, level, NOW) == (Call(),)


def test_at_the_hard_limit_a_held_task_goes_back_to_its_lane_later_counted() -> None:
    plan = budget_plan(order(headers={HELD_HEADER: 2}),
                       BudgetConfig(daily_hard_usd=1.0, hard_action="hold", hold_s=30), "hard",
                       NOW)
    assert kinds(plan) == [Emit, Hold]
    hold = first(plan, Hold)
    assert (hold.tier, hold.delay_ms, hold.headers[HELD_HEADER]) == ("cheap", 30_000, 3)
    assert first(plan, Emit).data == {"tier": "cheap", "action": "hold"}


def test_at_the_hard_limit_a_failing_budget_publishes_a_failed_result() -> None:
    plan = budget_plan(order(), BudgetConfig(daily_hard_usd=1.0, hard_action="fail"), "hard",
                       NOW)
    assert events(plan) == ["budget.hard"]
    publish = first(plan, Publish)
    result = publish.result
    assert (result.status, result.error and result.error.code) == ("failed",
                                                                    "budget_exceeded")
    assert publish.reply_to == "amq.gen-reply"
    assert result.latency_ms.queue == pytest.approx(2000)
    assert (result.route_reason, result.kind, result.cost_usd) == ("kind:classify",
                                                                   "classify", 0.0)


# -- dedup -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("task", "headers", "expected"), [
    ({}, {}, True),
    ({"cache": "off"}, {}, False),
    ({"temperature": 0.7}, {}, False),
    ({}, {CASCADE_HEADER: "{}"}, False),
    ({}, {VERIFY_HEADER: "{}"}, False),
])
def test_only_plain_cacheable_tasks_wait_for_a_twin(task: dict[str, Any],
                                                    headers: dict[str, Any],
                                                    expected: bool) -> None:
    assert dedups(order(headers=headers, **task)) is expected


def test_no_twin_answer_means_call() -> None:
    assert twin_plan(order(), None, CONFIG, NOW) == (Call(),)


def test_a_twin_answer_is_published_at_no_cost_and_says_dedup() -> None:
    answer = CachedAnswer(output="complaint", model="small", tier="cheap",
                          usage=Usage(prompt_tokens=1000, completion_tokens=10), task_id="t0")
    plan = twin_plan(order(), answer, CONFIG, NOW)
    result = first(plan, Publish).result
    assert (result.output, result.cache, result.cached_from, result.cost_usd) == (
        "complaint", "exact", "t0", 0.0)
    assert result.route_reason == "kind:classify;dedup"
    assert result.cost_saved_usd == pytest.approx((1000 * 100 + 10 * 400) / 1e6)
    assert first(plan, Emit).data["dedup"] is True


# -- a failed call ---------------------------------------------------------------------------

def failure(code: str = "provider_unavailable", retryable: bool = True,
            **fields: Any) -> CallFailure:
    return CallFailure(code=code, message=f"{code} happened", retryable=retryable, **fields)


def test_a_retryable_error_retries_at_the_next_attempt_with_backoff() -> None:
    plan = failure_plan(order(attempt=1), failure(), POLICY, random.Random(1), LATENCY, "small")
    assert kinds(plan) == [Retry, Emit]
    retry = first(plan, Retry)
    assert retry.attempt == 2 and retry.headers[ATTEMPT_HEADER] == 2
    assert 250 <= retry.delay_ms <= 500
    assert first(plan, Emit).data["error_code"] == "provider_unavailable"


def test_a_provider_hint_sets_the_retry_delay() -> None:
    plan = failure_plan(order(), failure(retry_after_s=7.0), POLICY, random.Random(1), LATENCY,
                        "small")
    assert first(plan, Retry).delay_ms == 7000


def test_a_429_handed_back_waits_again_at_the_same_attempt_with_its_wait_start() -> None:
    plan = failure_plan(order(attempt=3), failure("rate_limited", rate_limited=True,
                                                  rate_wait_since=NOW - 60),
                        POLICY, random.Random(1), LATENCY, "small")
    retry = first(plan, Retry)
    assert retry.attempt == 3  # waits spend no attempts, even at max_attempts
    assert retry.headers[RATE_WAIT_HEADER] == NOW - 60


@pytest.mark.parametrize(("attempt", "fail"), [
    (3, failure()),  # attempts spent
    (1, failure("provider_rejected", retryable=False)),  # not worth trying again
    (1, failure("rate_limited", retryable=False, rate_limited=True)),  # wait budget spent
])
def test_a_task_out_of_tries_is_failed_and_dead_lettered(attempt: int,
                                                         fail: CallFailure) -> None:
    plan = failure_plan(order(attempt=attempt), fail, POLICY, random.Random(1), LATENCY,
                        "small")
    assert kinds(plan) == [Release, Dead, Emit]
    dead = first(plan, Dead)
    assert dead.route == f"cheap.{fail.code}"
    assert dead.headers[ERROR_HEADER] == f"{fail.code}: {fail.message}"
    assert (dead.result.status, dead.result.attempts, dead.result.model) == ("failed",
                                                                             attempt, "small")
    assert dead.result.error is not None and dead.result.error.code == fail.code
    assert dead.result.latency_ms == LATENCY
    assert events(plan) == ["task.dead"]


def test_a_dead_task_that_takes_no_lock_releases_none() -> None:
    plan = failure_plan(order(attempt=3, cache="off"), failure(), POLICY, random.Random(1),
                        LATENCY, "small")
    assert kinds(plan) == [Dead, Emit]


# -- an answer -------------------------------------------------------------------------------

def answered(work: WorkOrder, text: str = "complaint", cfg: AgentqConfig = CONFIG) -> Result:
    return answer_result(work, Answer(text, "small", Usage(prompt_tokens=100,
                                                           completion_tokens=10)),
                         cfg, LATENCY)


def test_an_answer_is_priced_against_the_premium_tier() -> None:
    result = answered(order(attempt=2))
    assert result.cost_usd == pytest.approx((100 * 1 + 10 * 4) / 1e6)
    assert result.cost_saved_usd == pytest.approx((100 * 100 + 10 * 400) / 1e6 - result.cost_usd)
    assert (result.status, result.attempts, result.cache) == ("succeeded", 2, "miss")


def test_a_good_answer_is_charged_remembered_released_and_published() -> None:
    work = order(tier="standard", headers={ROUTED_TIER_HEADER: "cheap"})
    plan = answer_plan(work, answered(work), None, CONFIG)
    assert kinds(plan) == [Charge, Remember, Release, Publish, Emit]
    remember = first(plan, Remember)
    assert remember.tiers == ("cheap", "standard")  # the router's tier and the answering one
    assert remember.answer.tier == "standard"
    assert first(plan, Release).routed_tier == "cheap"
    assert first(plan, Charge).usd == first(plan, Publish).result.cost_usd
    assert events(plan) == ["task.completed"]


def test_an_uncacheable_answer_is_published_without_cache_writes() -> None:
    work = order(cache="off")
    assert kinds(answer_plan(work, answered(work), None, CONFIG)) == [Charge, Publish, Emit]


def test_a_semantic_kind_is_remembered_in_the_semantic_cache_too() -> None:
    cfg = config(cache={"semantic_thresholds": {"classify": 0.9}})
    work = order()
    remember = first(answer_plan(work, answered(work, cfg=cfg), None, cfg), Remember)
    assert remember.semantic_tier == "cheap"


@pytest.mark.parametrize(("cached", "agreed"), [("complaint", True), ("praise", False)])
def test_a_sampled_semantic_hit_is_verified_against_the_real_answer(cached: str,
                                                                    agreed: bool) -> None:
    sample = json.dumps({"key": "k1", "output": cached, "similarity": 0.95})
    work = order(headers={VERIFY_HEADER: sample})
    plan = answer_plan(work, answered(work), None, CONFIG)
    assert first(plan, Verify) == Verify("k1", agreed)
    assert events(plan) == ["cache.verify", "task.completed"]


def test_an_unreadable_verify_header_verifies_nothing() -> None:
    work = order(headers={VERIFY_HEADER: "{not json"})
    assert Verify not in kinds(answer_plan(work, answered(work), None, CONFIG))


def test_an_answer_failing_its_validator_escalates_with_the_calls_so_far() -> None:
    work = order()
    plan = answer_plan(work, answered(work, "not sure"), "labels", CONFIG)
    assert kinds(plan) == [Charge, Escalate, Emit]
    escalate = first(plan, Escalate)
    assert escalate.tier == "standard"
    assert escalate.headers[ATTEMPT_HEADER] == 1
    assert escalate.headers[ROUTE_HEADER] == "kind:classify;escalated:cheap->standard(labels)"
    state = CascadeState.from_header(escalate.headers[CASCADE_HEADER])
    assert [(c.tier, c.valid) for c in state.calls] == [("cheap", False)]
    assert events(plan) == ["task.escalated"]


@pytest.mark.parametrize("cfg", [
    config(cascade={"enabled": False}),
    config(tenants={"acme": {"ceiling": "cheap"}}),
    config(cascade={"max_escalations": 0}),
])
def test_with_no_tier_left_a_failed_check_fails_the_task(cfg: AgentqConfig) -> None:
    work = order()
    plan = answer_plan(work, answered(work, "not sure", cfg), "labels", cfg)
    assert kinds(plan) == [Charge, Release, Publish, Emit]
    result = first(plan, Publish).result
    assert result.status == "failed"
    assert result.error is not None and result.error.code == "validation_failed"


def test_the_last_tier_of_a_cascade_publishes_the_cascade_total() -> None:
    prior = CascadeState().plus("cheap", "small", Usage(prompt_tokens=100), 0.25, valid=False)
    work = order(tier="standard", headers={CASCADE_HEADER: prior.to_header()})
    result = answered(work)
    publish = first(answer_plan(work, result, None, CONFIG), Publish)
    assert publish.result.cost_usd == pytest.approx(0.25 + result.cost_usd)
    assert [c.tier for c in publish.result.calls] == ["cheap", "standard"]
    assert result.calls == []  # the Result it was built from is not changed


def test_latency_splits_queue_limiter_and_llm() -> None:
    task = order().task
    latency = call_latency(task, started=NOW, now=NOW + 3, llm_s=1.5, limiter_s=0.5)
    assert (latency.queue, latency.llm, latency.limiter, latency.total) == (
        pytest.approx(2000), 1500, 500, pytest.approx(5000))
