"""Decide what to do with one work message: pure functions over plain data that return a Plan.

The table, in the order a message meets it (step: function -> outcomes):

- receive: `read_order` -> `WorkOrder`, or `Reject` (not a Task, unknown tier, bad attempt)
- budget: `budget_plan` -> `Call`; at the hard limit `Hold` (hold) or a failed `Publish` (fail)
- dedup: `dedups`, `twin_plan` -> `Call`, or the twin's answer `Publish`ed
- call failed: `failure_plan` -> `Retry` (same attempt after a 429, the next one else), or
  `Dead` (attempts spent, an error not worth retrying, the wait budget spent)
- answered: `answer_plan` -> `Escalate` (failed its validator, a tier left), or `Publish`:
  failed (no tier left), or succeeded after `Verify` (a sampled semantic hit) and `Remember`

`act.py` carries a Plan out, step by step; nothing here touches the broker, Redis or a clock.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from services.common.actions import completed
from services.common.cache import CachedAnswer, cacheable
from services.common.config import AgentqConfig, ModelEntry
from services.common.cost_config import BudgetConfig
from services.common.guard import answers_agree
from services.common.models import TIERS, ErrorInfo, Latency, Result, Task, Usage
from services.common.pricing import call_cost, premium_baseline
from services.common.results import answered, failed, from_cache, waited
from services.common.semantic_cache import semantic_cacheable
from services.common.topology import ATTEMPT_HEADER, ERROR_HEADER, ROUTE_HEADER, tier_of
from services.common.work_headers import (
    CASCADE_HEADER,
    HELD_HEADER,
    RATE_WAIT_HEADER,
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
    header_text,
)
from services.worker.cascade import CascadeState, next_tier
from services.worker.retry import next_attempt, retry_delay_ms

DEAD_REASON_MAX = 4000


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long apart the task's own errors are tried again."""

    max_attempts: int
    base_ms: int
    max_ms: int


@dataclass(frozen=True)
class CallFailure:
    """A failed provider call, as far as deciding what next needs to know."""

    code: str
    message: str
    retryable: bool
    rate_limited: bool = False  # a 429 handed back to wait: no attempt spent
    retry_after_s: float | None = None  # the provider's hint
    rate_wait_since: float | None = None  # when the task first waited for capacity


@dataclass(frozen=True)
class Answer:
    """A provider's answer to one call."""

    text: str
    model: str
    usage: Usage
    entry: ModelEntry | None = None  # the model entry that answered (its price)


# -- receive ---------------------------------------------------------------------------------

def read_order(body: bytes, routing_key: str, headers: Mapping[str, Any] | None) -> (
        WorkOrder | Reject):
    """Read a work message; `Reject` when it can never be run."""
    try:
        task = Task.model_validate_json(body)
    except ValidationError as exc:
        return Reject(f"not a Task: {exc.errors()[0]['msg']}")
    tier = tier_of(routing_key)  # from a lane or the tier's own queue
    if tier not in TIERS:
        return Reject(f"unknown tier {tier!r}")
    fields = dict(headers or {})
    try:
        attempt = max(1, int(fields.get(ATTEMPT_HEADER) or 1))
    except (TypeError, ValueError):
        return Reject(f"{ATTEMPT_HEADER} is not a number: {fields.get(ATTEMPT_HEADER)!r}")
    return WorkOrder(task=task, tier=tier, attempt=attempt, headers=fields)


def rate_wait_since(headers: Mapping[str, Any]) -> float | None:
    """Return when the task first waited for capacity, from its message header."""
    try:
        return float(headers[RATE_WAIT_HEADER])
    except (KeyError, TypeError, ValueError):
        return None


# -- before the call -------------------------------------------------------------------------

def budget_plan(order: WorkOrder, budget: BudgetConfig | None, level: str, now: float) -> Plan:
    """Call unless the tenant is at its hard spend limit: then hold the task or fail it.

    `level` is the ledger's reading; one it could not read is "ok" (the limiter still bounds
    the rate, and the spend is counted once Redis is back).
    """
    task = order.task
    if budget is None or level != "hard":
        return (Call(),)
    said = Emit("budget.hard", task.tenant, task.id,
                {"tier": order.tier, "action": budget.hard_action})
    if budget.hard_action == "hold":
        held = int(order.headers.get(HELD_HEADER) or 0) + 1
        return (said, Hold(order.tier, task, {**order.headers, HELD_HEADER: held},
                           budget.hold_s * 1000))
    result = failed(task, tier=order.tier, route_reason=order.route_reason,
                    latency=waited(task, now), code="budget_exceeded",
                    message=f"tenant {task.tenant} is at its hard spend limit")
    return (said, Publish(result, task.reply_to))


def dedups(order: WorkOrder) -> bool:
    """Return whether the task may wait for an identical one's call (in-flight dedup).

    An escalation or a verification must call the model; its lock is already settled.
    """
    return (cacheable(order.task) and CASCADE_HEADER not in order.headers
            and VERIFY_HEADER not in order.headers)


def twin_plan(order: WorkOrder, answer: CachedAnswer | None, config: AgentqConfig,
              now: float) -> Plan:
    """Call, unless a twin's call (or the cache) already answered the task."""
    if answer is None:
        return (Call(),)
    task = order.task
    result = from_cache(task, answer, config, cache="exact",
                        route_reason=f"{order.route_reason};dedup", now=now)
    return (Publish(result, task.reply_to), completed(result, 0, timed=False, dedup=True))


def release(order: WorkOrder) -> Plan:
    """Give up the task's in-flight lock, if it is one that takes locks."""
    return (Release(order.task, order.routed_tier),) if cacheable(order.task) else ()


# -- after a failed call ---------------------------------------------------------------------

def failure_plan(order: WorkOrder, failure: CallFailure, policy: RetryPolicy,
                 rng: random.Random, latency: Latency, model: str) -> Plan:
    """Retry through the delay queues, or fail and dead-letter the task.

    Only the task's own errors spend attempts: waits for capacity (429s) go again at the
    same attempt, with their wait budget's start in the header.
    """
    task, attempt = order.task, order.attempt
    headers = dict(order.headers)
    if failure.rate_wait_since is not None:
        headers[RATE_WAIT_HEADER] = failure.rate_wait_since
    again = next_attempt(failure.rate_limited, failure.retryable, attempt, policy.max_attempts)
    if again is not None:
        delay_ms = retry_delay_ms(attempt, policy.base_ms, policy.max_ms, rng,
                                  failure.retry_after_s)
        return (Retry(order.tier, task, {**headers, ATTEMPT_HEADER: again}, delay_ms, again),
                Emit("task.retry", task.tenant, task.id,
                     {"tier": order.tier, "attempt": attempt, "delay_ms": round(delay_ms),
                      "error_code": failure.code}))
    result = failed(task, tier=order.tier, route_reason=order.route_reason, latency=latency,
                    code=failure.code, message=failure.message, model=model, attempts=attempt)
    reason = f"{failure.code}: {failure.message}"[:DEAD_REASON_MAX]
    return (*release(order),
            Dead(result, task, f"{order.tier}.{failure.code}",
                 {**headers, ERROR_HEADER: reason}, reason, task.reply_to),
            Emit("task.dead", task.tenant, task.id,
                 {"tier": order.tier, "attempts": attempt, "error_code": failure.code}))


# -- after an answer -------------------------------------------------------------------------

def call_latency(task: Task, started: float, now: float, llm_s: float,
                 limiter_s: float | None) -> Latency:
    """Split a delivery's time: queued before it, waiting for capacity, in provider calls."""
    submitted = task.submitted_at or started
    return Latency(queue=max(0.0, (started - submitted) * 1000), llm=llm_s * 1000,
                   limiter=None if limiter_s is None else limiter_s * 1000,
                   total=max(0.0, (now - submitted) * 1000))


def answer_result(order: WorkOrder, answer: Answer, config: AgentqConfig,
                  latency: Latency) -> Result:
    """Price one call's answer and build its Result."""
    cost = call_cost(answer.entry or config.primary(order.tier), answer.usage)
    return answered(order.task, tier=order.tier, route_reason=order.route_reason,
                    latency=latency, output=answer.text, model=answer.model,
                    usage=answer.usage, cost_usd=cost, config=config, attempts=order.attempt)


def answer_plan(order: WorkOrder, result: Result, failed_check: str | None,
                config: AgentqConfig) -> Plan:
    """Count the call's spend; escalate an answer that failed its validator while a tier is
    left, else publish the Result (failed, or verified and remembered)."""
    task, tier = order.task, order.tier
    spend = Charge(task.tenant, result.cost_usd)
    prior = CascadeState.from_header(order.headers.get(CASCADE_HEADER))
    if failed_check is not None:
        upper = next_tier(tier, config.tenant(task.tenant).ceiling, prior.escalations,
                          config.cascade.max_escalations) if config.cascade.enabled else None
        if upper is not None:
            return (spend, *escalate(order, upper, prior, result, failed_check))
    final = with_prior_calls(prior, result, failed_check is None, config)
    if failed_check is not None:
        final = final.model_copy(update={
            "status": "failed",
            "error": ErrorInfo(code="validation_failed",
                               message=f"the answer failed the {failed_check} check")})
        checks: Plan = ()
    else:
        checks = (*verify(order, final), *remember(order, final, config))
    return (spend, *checks, *release(order), Publish(final, task.reply_to),
            completed(final, order.attempt))


def escalate(order: WorkOrder, upper: str, prior: CascadeState, result: Result,
             why: str) -> Plan:
    """Send the task to the next tier's lane, the calls so far in its cascade header."""
    task, tier = order.task, order.tier
    state = prior.plus(tier, result.model, result.usage, result.cost_usd, valid=False)
    reason = f"{order.route_reason};escalated:{tier}->{upper}({why})"
    return (Escalate(upper, task, {**order.headers, ROUTE_HEADER: reason, ATTEMPT_HEADER: 1,
                                   CASCADE_HEADER: state.to_header()}),
            Emit("task.escalated", task.tenant, task.id,
                 {"tier": tier, "to_tier": upper, "kind": task.kind, "reason": why,
                  "cost_usd": result.cost_usd, "spent_usd": state.cost_usd}))


def with_prior_calls(prior: CascadeState, result: Result, valid: bool,
                     config: AgentqConfig) -> Result:
    """Return the Result with a cascade's earlier calls in its cost and `calls`."""
    if not prior.calls:
        return result
    calls = prior.plus(result.tier, result.model, result.usage, result.cost_usd, valid)
    total = calls.cost_usd
    return result.model_copy(update={
        "cost_usd": total, "calls": calls.calls,
        "cost_saved_usd": max(0.0, premium_baseline(config, result.usage) - total)})


def verify(order: WorkOrder, result: Result) -> Plan:
    """Compare a real answer with the semantic hit it was sampled from (header VERIFY)."""
    raw = header_text(order.headers, VERIFY_HEADER)
    if not raw:
        return ()
    try:
        sample = json.loads(raw)
    except ValueError:
        sample = None
    if not isinstance(sample, dict):  # nothing to compare with: the answer stands alone
        return ()
    agreed = answers_agree(str(sample.get("output", "")), result.output)
    task = order.task
    return (Verify(str(sample.get("key", "")), agreed),
            Emit("cache.verify", task.tenant, task.id,
                 {"tier": result.tier, "kind": task.kind, "agreed": agreed,
                  "similarity": sample.get("similarity")}))


def remember(order: WorkOrder, result: Result, config: AgentqConfig) -> Plan:
    """Cache an answer under the tier the router chose (and the one that answered)."""
    task = order.task
    if not cacheable(task):
        return ()
    answer = CachedAnswer(output=result.output, model=result.model, tier=order.tier,
                          usage=result.usage, task_id=task.id)
    semantic = semantic_cacheable(task) and config.cache.semantic_threshold(task.kind) is not None
    return (Remember(task, answer, tuple(dict.fromkeys((order.routed_tier, order.tier))),
                     order.routed_tier if semantic else None),)
