"""The batcher's pure parts: who may wait, grouping, deadlines, reconcile, a batch's end, lines."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from services.batcher.lines import (
    LineAnswer,
    LineError,
    batch_result,
    jsonl,
    line_keys,
    read_line,
    read_lines,
    request_line,
    twin_result,
)
from services.batcher.plan import (
    Claim,
    affordable,
    batch_end,
    batch_entry,
    custom_id_of,
    due_claims,
    goes_to_batch,
    ready_groups,
    reconcile,
    twins,
)
from services.common.cache import CachedAnswer
from services.common.config import AgentqConfig, load_config
from services.common.models import Task, Usage, Validator
from services.common.semantic_cache import SemanticHit
from services.common.topology import Names
from services.router.decide import Answer, Defer, Found, Route, route_plan
from services.router.policy import RouteDecision


def config(**provider: Any) -> AgentqConfig:
    raw = load_config(None).model_dump()
    raw["providers"]["mock"].update(provider)
    raw["batches"] = {"turnaround_s": 600, "live_margin_s": 300}
    return AgentqConfig.model_validate(raw)


def claim(n: int, at: float, model: str = "gpt-4o-mini", **fields: Any) -> Claim:
    base = Claim(tenant="t", task_id=f"id{n}", custom_id=f"t/id{n}", provider="mock",
                 model=model, tier="cheap", state="waiting", claimed_at=at)
    return replace(base, **fields)


NOW = 1_800_000_000.0


@pytest.mark.parametrize(("fields", "expected"), [
    ({"deferrable": False}, False),
    ({"deferrable": True}, True),  # no deadline: the provider's window bounds it
    ({"deferrable": True, "deadline": "2h"}, True),  # 2 h >= 600 s + 300 s
    ({"deferrable": True, "deadline": "10m"}, False),  # 600 s < 900 s: live
    ({"deferrable": True, "deadline": "15m"}, True),  # exactly the room needed
    ({"deferrable": True, "validator": Validator(labels=["a"])}, False),  # cascades are live
])
def test_goes_to_batch(fields: dict[str, Any], expected: bool) -> None:
    task = Task(prompt="x", submitted_at=NOW, **fields)
    assert goes_to_batch(task, "cheap", config(), NOW) is expected


def test_a_provider_without_a_batch_api_sends_deferrable_tasks_live() -> None:
    table = config(batch=False)
    assert batch_entry(table, "cheap") is None
    assert not goes_to_batch(Task(prompt="x", deferrable=True), "cheap", table, NOW)
    assert batch_entry(config(), "cheap") == config().primary("cheap")


def test_custom_id_keeps_tenant_and_id_apart() -> None:
    assert custom_id_of(Task(prompt="x", tenant="acme", id="a:1")) == "acme/a:1"


def test_full_batches_go_at_once_and_the_rest_when_old() -> None:
    young = [claim(i, NOW - 1) for i in range(5)]
    assert [len(g) for g in ready_groups(young, NOW, max_lines=2, max_age_s=60)] == [2, 2]
    assert ready_groups(young[:1], NOW, 2, 60) == []
    old = [claim(9, NOW - 61)]
    assert ready_groups(old, NOW, 2, 60) == [old]


def test_groups_are_per_provider_and_model_oldest_first() -> None:
    claims = [claim(1, NOW - 5, "b"), claim(2, NOW - 9, "a"), claim(3, NOW - 7, "b")]
    groups = ready_groups(claims, NOW, max_lines=10, max_age_s=0)
    assert [[c.task_id for c in g] for g in groups] == [["id2"], ["id3", "id1"]]


def test_a_tenant_at_its_hard_budget_waits() -> None:
    claims = [claim(1, NOW), replace(claim(2, NOW), tenant="broke"), claim(3, NOW)]
    kept = affordable(claims, {"broke": "hard", "t": "soft"})
    assert [c.task_id for c in kept] == ["id1", "id3"]


def test_due_claims_are_the_held_ones_near_their_deadline() -> None:
    claims = [claim(1, NOW, deadline_at=NOW + 299), claim(2, NOW, deadline_at=NOW + 301),
              claim(3, NOW), claim(4, NOW, deadline_at=NOW, state="done"),
              claim(5, NOW, deadline_at=NOW + 10, state="submitted")]
    assert [c.task_id for c in due_claims(claims, NOW, 300)] == ["id1", "id5"]


def test_reconcile_adopts_found_batches_and_uploads_the_rest_once() -> None:
    plan = reconcile(["g1", "g2", "g3"], {"g2": "batch_2"})
    assert plan.adopt == {"g2": "batch_2"}
    assert plan.upload == ["g1", "g3"]


def test_settle_publishes_answers_sends_the_rest_live_and_leaves_ended_alone() -> None:
    members = [claim(1, NOW, state="submitted"), claim(2, NOW, state="submitted"),
               claim(3, NOW, state="live"), claim(4, NOW, state="done")]
    ended = batch_end(members, ["t/id1", "t/id3", "t/id4"])
    assert [c.task_id for c in ended.answered] == ["id1"]
    assert [c.task_id for c in ended.live] == ["id2"]


def test_twins_share_one_line_keyed_as_the_live_dedup_keys_them() -> None:
    def task(n: int, prompt: str, **fields: Any) -> Task:
        return Task(prompt=prompt, tenant="t", id=f"id{n}", **fields)

    tasks = {f"t/id{t.id[2:]}": t for t in [
        task(1, "Classify: late"), task(2, "classify:   LATE"),  # normalised alike
        task(3, "Classify: late", max_tokens=5),  # another request
        task(4, "Classify: late", cache="off"),  # never deduplicated
        task(5, "Classify: late", temperature=0.7),  # not cacheable: its own line
        task(6, "Classify: late")]}
    members = [claim(n, NOW + n) for n in range(1, 7)]
    keys = line_keys(Names("ns"), members, tasks)
    assert keys["t/id4"] is None and keys["t/id5"] is None
    assert [[c.task_id for c in line] for line in twins(members, keys)] == [
        ["id1", "id2", "id6"], ["id3"], ["id4"], ["id5"]]
    other_tier = replace(claim(7, NOW), tier="standard")
    assert len(twins([members[0], other_tier],
                     line_keys(Names("ns"), [members[0], other_tier],
                               {**tasks, "t/id7": task(7, "Classify: late")}))) == 2


def test_every_held_twin_gets_its_line_and_one_of_them_pays_for_it() -> None:
    members = [claim(1, NOW, state="live"), claim(2, NOW, state="submitted"),
               claim(3, NOW, state="submitted"), claim(4, NOW, state="submitted"),
               claim(5, NOW, state="submitted")]
    keys = {"t/id1": "k", "t/id2": "k", "t/id3": "k", "t/id4": "other", "t/id5": "other"}
    # Line id1 answered, though id1 itself went live (deadline): its held twins take it.
    ended = batch_end(members, ["t/id1"], keys)
    assert [c.task_id for c in ended.answered] == ["id2"]
    assert ended.line_of == {"t/id2": "t/id1"}
    assert [(t.task_id, o.task_id) for t, o in ended.twins] == [("id3", "id2")]
    assert [c.task_id for c in ended.live] == ["id4", "id5"]  # their line failed


def test_a_twins_result_is_the_paid_answer_at_no_cost() -> None:
    table = config()
    entry = table.primary("cheap")
    answer = read_line(ANSWER)
    assert isinstance(answer, LineAnswer)
    paid = batch_result(Task(prompt="x", tenant="t", id="a", submitted_at=NOW - 50), answer,
                        entry=entry, tier="cheap", route_reason="kind", batch_id="batch_1",
                        config=table, batch_seconds=40, now=NOW)
    twin = twin_result(Task(prompt="x", tenant="t", id="b", submitted_at=NOW - 20,
                            metadata={"m": 1}), paid, route_reason="kind", config=table,
                       now=NOW)
    assert (twin.task_id, twin.output, twin.usage, twin.batch_id) == (
        "b", "yes", paid.usage, "batch_1")
    assert (twin.cost_usd, twin.cache, twin.cached_from, twin.attempts) == (0.0, "exact", "a", 0)
    assert twin.route_reason == "kind;dedup" and twin.metadata == {"m": 1}
    assert twin.latency_ms.total == pytest.approx(20_000) and twin.latency_ms.llm == 0
    assert paid.cost_usd > 0 and twin.cost_saved_usd >= paid.cost_saved_usd


def test_request_line_is_the_live_body() -> None:
    table = config()
    task = Task(prompt="hello", tenant="t", id="a", max_tokens=5)
    line = request_line(task, table.primary("cheap"), table)
    assert line == {"custom_id": "t/a", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": "gpt-4o-mini",
                             "messages": [{"role": "user", "content": "hello"}],
                             "temperature": 0.0, "max_tokens": 5}}
    assert [json.loads(x) for x in jsonl([line, line]).decode().splitlines()] == [line, line]


ANSWER = {"id": "r1", "custom_id": "t/a", "error": None, "response": {
    "status_code": 200, "request_id": "q",
    "body": {"model": "gpt-4o-mini", "choices": [{"message": {"content": "yes"}}],
             "usage": {"prompt_tokens": 1000, "completion_tokens": 2000}}}}


def test_result_lines_are_read_as_answers_and_errors() -> None:
    assert read_line(ANSWER) == LineAnswer("t/a", "yes", "gpt-4o-mini", Usage(
        prompt_tokens=1000, completion_tokens=2000))
    failed = {"custom_id": "t/b", "error": None, "response": {
        "status_code": 500, "body": {"error": {"code": "server_error", "message": "boom"}}}}
    assert read_line(failed) == LineError("t/b", "server_error", "boom")
    expired = {"custom_id": "t/c", "response": None,
               "error": {"code": "batch_expired", "message": "not run"}}
    assert read_line(expired) == LineError("t/c", "batch_expired", "not run")
    text = "\n".join([json.dumps(ANSWER), "not json", json.dumps({"no": "id"}), ""])
    assert [o.custom_id for o in read_lines(text)] == ["t/a"]  # the unreadable go live


def test_a_batch_result_costs_the_batch_price_and_names_its_batch() -> None:
    table = config(batch_discount=0.5)
    entry = table.primary("cheap")
    task = Task(prompt="x", tenant="t", id="a", kind="classify", submitted_at=NOW - 100)
    answer = read_line(ANSWER)
    assert isinstance(answer, LineAnswer)
    result = batch_result(task, answer, entry=entry, tier="cheap", route_reason="kind",
                          batch_id="batch_1", config=table, batch_seconds=40, now=NOW)
    live = entry.cost(1000, 2000)
    assert result.cost_usd == pytest.approx(live * 0.5)
    assert (result.batch_id, result.status, result.output) == ("batch_1", "succeeded", "yes")
    assert result.latency_ms.llm == pytest.approx(40_000)
    assert result.latency_ms.total == pytest.approx(100_000)
    assert result.cost_saved_usd > 0
    other = config(batch_discount=0.2)
    priced = batch_result(task, answer, entry=entry, tier="cheap", route_reason="kind",
                          batch_id="batch_1", config=other, batch_seconds=40, now=NOW)
    assert priced.cost_usd == pytest.approx(live * 0.8)



# --- the router's branch (services/router/decide.py dispatch) ------------------------------

HIT = CachedAnswer(output="o", model="m", tier="cheap", usage=Usage())


def _first(found: Found, table: AgentqConfig | None = None, **fields: Any) -> object:
    task = Task(prompt="x", tenant="t", id="a", submitted_at=NOW, **fields)
    return route_plan(task, RouteDecision("cheap", "kind:classify"), "ok", found,
                      table or config(), NOW)[0]


def test_the_router_defers_a_deferrable_miss_and_nothing_else() -> None:
    deferred = _first(Found(), deferrable=True, deadline="2h")
    assert isinstance(deferred, Defer) and deferred.tier == "cheap"
    assert isinstance(_first(Found(), deferrable=True, deadline="5m"), Route)  # too near
    assert isinstance(_first(Found()), Route)
    assert isinstance(_first(Found(exact=HIT), deferrable=True), Answer)  # a hit never waits
    sampled = config().cache.model_copy(update={"verify_share": 1.0})
    verify = _first(Found(semantic=SemanticHit(key="k", similarity=0.99, answer=HIT)),
                    config().model_copy(update={"cache": sampled}), deferrable=True)
    assert isinstance(verify, Route)  # its worker compares the answers live
    assert isinstance(_first(Found(), config(batch=False), deferrable=True), Route)
