"""Cascades: validators are pure checks; a failed answer escalates through the real stack."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from bench.cost_stack import PRICES, CostStack, cost_stack
from services.common.models import Validator
from services.worker.cascade import CascadeState, check_answer, next_tier

SCHEMA = {"type": "object", "required": ["answer"],
          "properties": {"answer": {"type": "string"}}}


@pytest.mark.parametrize(("validator", "answer", "failure"), [
    (None, "anything", None),
    ({"labels": ["billing", "shipping"]}, "Billing.", None),
    ({"labels": ["billing", "shipping"]}, " shipping ", None),
    ({"labels": ["billing", "shipping"]}, "I am not sure.", "labels"),
    ({"regex": r"\d{3}-\d{4}"}, "555-1234", None),
    ({"regex": r"\d{3}-\d{4}"}, "call 555-1234", "regex"),
    ({"json_schema": SCHEMA}, '{"answer": "yes"}', None),
    ({"json_schema": SCHEMA}, '```json\n{"answer": "yes"}\n```', None),
    ({"json_schema": SCHEMA}, '{"answer": 3}', "json_schema"),
    ({"json_schema": SCHEMA}, "{}", "json_schema"),
    ({"json_schema": SCHEMA}, "not json at all", "json"),
])
def test_check_answer(validator: dict[str, Any] | None, answer: str,
                      failure: str | None) -> None:
    parsed = Validator.model_validate(validator) if validator is not None else None
    assert check_answer(parsed, answer) == failure


@pytest.mark.parametrize(("bad", "says"), [
    ({"regex": "(unclosed"}, "regex does not compile"),
    ({"json_schema": {"type": "nonsense"}}, "not a valid JSON Schema"),
    # Before: passed ingest, then raised after every paid call (21 calls for one task).
    ({"json_schema": {"$ref": "#/definitions/nope"}}, "points to nothing"),
    ({"json_schema": {"properties": {"a": {"$ref": "#/$defs/missing"}}}}, "points to nothing"),
    # Before: the worker fetched the URL, blocking, with no timeout (SSRF from any client).
    ({"json_schema": {"$ref": "http://127.0.0.1:9/schema.json"}}, "not inside the schema"),
    ({"json_schema": {"items": {"$ref": "other.json#/x"}}}, "not inside the schema"),
])
def test_a_broken_validator_is_refused_at_intake(bad: dict[str, Any], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        Validator.model_validate(bad)


def test_local_refs_still_work() -> None:
    schema = {"$defs": {"answer": {"type": "string"}}, "type": "object",
              "properties": {"answer": {"$ref": "#/$defs/answer"}}, "required": ["answer"]}
    parsed = Validator.model_validate({"json_schema": schema})
    assert check_answer(parsed, '{"answer": "yes"}') is None
    assert check_answer(parsed, '{"answer": 1}') == "json_schema"


@pytest.mark.timeout(30)
def test_a_catastrophic_regex_fails_the_check_quickly_instead_of_hanging() -> None:
    # `.*(x+x+)+y` against 30 x took ~50 s per check on Python's re, on the event loop; the
    # regex engine answers that one at once, and stops those it cannot past its time limit.
    assert check_answer(Validator.model_validate({"regex": ".*(x+x+)+y"}), "x" * 30) == "regex"
    exponential = Validator.model_validate({"regex": "(a|aa)+b"})
    assert check_answer(exponential, "a" * 60) == "regex (timed out)"
    assert check_answer(exponential, "aaab") is None


def test_a_schema_that_cannot_be_applied_fails_the_check_not_the_task() -> None:
    # What ingest's check cannot see (a $ref under a nested $id) must still never raise
    # after a paid call: it fails the check, and the task goes on to escalate or fail once.
    schema = {"properties": {"a": {"$id": "http://127.0.0.1:9/", "$ref": "#/nope"}}}
    parsed = Validator.model_construct(json_schema=schema, regex=None, labels=None)
    assert check_answer(parsed, '{"a": 1}') == "json_schema (unusable schema)"


@pytest.mark.parametrize(("tier", "ceiling", "done", "limit", "expected"), [
    ("cheap", None, 0, 2, "standard"),
    ("standard", None, 1, 2, "premium"),
    ("premium", None, 0, 2, None),
    ("cheap", "cheap", 0, 2, None),
    ("cheap", "standard", 0, 2, "standard"),
    ("standard", "standard", 1, 2, None),
    ("cheap", None, 1, 1, None),
])
def test_next_tier(tier: str, ceiling: Any, done: int, limit: int, expected: str | None) -> None:
    assert next_tier(tier, ceiling, done, limit) == expected


def test_cascade_state_round_trips_through_a_header() -> None:
    from services.common.models import Usage

    state = CascadeState().plus("cheap", "gpt-4o-mini", Usage(prompt_tokens=10), 0.001, False)
    again = CascadeState.from_header(state.to_header().encode())
    assert again == state and again.cost_usd == pytest.approx(0.001) and again.escalations == 1
    assert CascadeState.from_header(None) == CascadeState()


TENANTS = """
[tenants.capped]
ceiling = "standard"
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CostStack]:
    with cost_stack(tmp_path_factory.mktemp("cascade"), extra=TENANTS) as running:
        yield running


def _price(model: str, usage: dict[str, int]) -> float:
    price_in, price_out = PRICES[model]
    return (usage["prompt_tokens"] * price_in + usage["completion_tokens"] * price_out) / 1e6


def test_hard_classification_escalates_from_cheap_to_standard(stack: CostStack) -> None:
    before = stack.stats()["by_model"]
    labels = ["refund", "delivery", "other"]
    [result] = stack.run([{
        "kind": "classify", "tenant": "cascade-a",
        "prompt": f"[hard] Classify: my parcel is two weeks late. labels: {', '.join(labels)}",
        "validator": {"labels": labels}}])
    assert result["status"] == "succeeded", result
    assert result["tier"] == "standard" and result["output"] in labels
    assert "escalated:cheap->standard(labels)" in result["route_reason"]
    first, second = result["calls"]
    assert (first["tier"], first["model"], first["valid"]) == ("cheap", "gpt-4o-mini", False)
    assert (second["tier"], second["model"], second["valid"]) == ("standard", "gpt-4o", True)
    assert first["cost_usd"] == pytest.approx(_price("gpt-4o-mini", first["usage"]))
    assert second["cost_usd"] == pytest.approx(_price("gpt-4o", second["usage"]))
    assert result["cost_usd"] == pytest.approx(first["cost_usd"] + second["cost_usd"])
    premium = _price("o1", result["usage"])
    assert result["cost_saved_usd"] == pytest.approx(premium - result["cost_usd"])
    after = stack.stats()["by_model"]
    for model in ("gpt-4o-mini", "gpt-4o"):
        assert after[model]["completed"] - before.get(model, {}).get("completed", 0) == 1


def test_a_valid_cheap_answer_does_not_escalate(stack: CostStack) -> None:
    [result] = stack.run([{
        "kind": "extract", "prompt": "Extract the order number as json: order 55-1",
        "validator": {"json_schema": SCHEMA}}])
    assert result["status"] == "succeeded" and result["tier"] == "cheap"
    assert result["calls"] == [] and "escalated" not in result["route_reason"]


def test_escalation_stops_at_the_tenant_ceiling(stack: CostStack) -> None:
    never = {"type": "object", "required": ["missing"]}
    capped, free = stack.run([
        {"kind": "extract", "tenant": "capped", "prompt": "Return json for: capped case",
         "validator": {"json_schema": never}},
        {"kind": "extract", "tenant": "free", "prompt": "Return json for: free case",
         "validator": {"json_schema": never}}])
    assert capped["status"] == "failed" and capped["error"]["code"] == "validation_failed"
    assert [c["tier"] for c in capped["calls"]] == ["cheap", "standard"]
    assert [c["tier"] for c in free["calls"]] == ["cheap", "standard", "premium"]
    assert free["cost_usd"] == pytest.approx(sum(c["cost_usd"] for c in free["calls"]))
