"""Routing: each rule, the complexity score, the ceiling, budgets (pure and through the stack)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from bench.cost_stack import CostStack, cost_stack
from services.common.budget import Spend, SpendLedger, budget_level
from services.common.config import AgentqConfig, load_config
from services.common.cost_config import BudgetConfig
from services.common.models import Task
from services.common.settings import Settings
from services.common.tokens import count_messages
from services.common.topology import Names
from services.router.complexity import score
from services.router.policy import choose_tier, one_down

ROOT = Path(__file__).resolve().parent.parent
CODE = "Fix this: def total(xs): return sum(x for x in xs) + 1 == 3"
PROOF = ("Prove step by step that the sum of the first n odd numbers is n^2, then derive "
         "1+2+...+n and explain why it holds.")


@pytest.fixture
def config() -> AgentqConfig:
    raw = load_config(None).model_dump()
    raw["tenants"] = {
        "capped": {"ceiling": "standard"},
        "special": {"kinds": {"classify": "premium", "reason": "standard"}},
    }
    raw["routing"]["complexity"]["kinds"] = {"code": {"standard_from": 0.1,
                                                      "premium_from": 0.25}}
    return AgentqConfig.model_validate(raw)


def route(config: AgentqConfig, budget: str = "ok", **task: object) -> tuple[str, str]:
    parsed = Task.model_validate(task)
    tokens = count_messages(m.model_dump() for m in parsed.messages)
    decision = choose_tier(parsed, config, tokens, budget=budget)  # type: ignore[arg-type]
    return decision.tier, decision.reason


def test_a_hint_wins_over_every_rule(config: AgentqConfig) -> None:
    assert route(config, prompt=PROOF, kind="classify", tier="standard") == ("standard", "hint")


def test_a_tenant_kind_rule_wins_over_the_kind_rule(config: AgentqConfig) -> None:
    assert route(config, prompt="x", kind="classify", tenant="special") == (
        "premium", "tenant-kind:classify")
    assert route(config, prompt="x", kind="classify") == ("cheap", "kind:classify")


@pytest.mark.parametrize(("kind", "tier"), [("classify", "cheap"), ("extract", "cheap"),
                                            ("summarize", "standard"), ("reason", "premium")])
def test_kind_rules(config: AgentqConfig, kind: str, tier: str) -> None:
    assert route(config, prompt=PROOF, kind=kind) == (tier, f"kind:{kind}")


@pytest.mark.parametrize(("prompt", "tier", "signals"), [
    ("What is the capital of France?", "cheap", "length"),
    (CODE, "standard", "(code"),
    (PROOF, "premium", "(reasoning,math)"),
])
def test_kinds_without_a_rule_go_by_complexity(config: AgentqConfig, prompt: str, tier: str,
                                               signals: str) -> None:
    got_tier, reason = route(config, prompt=prompt, kind="chat")
    assert got_tier == tier and signals in reason


def test_complexity_thresholds_are_per_kind(config: AgentqConfig) -> None:
    assert route(config, prompt=CODE, kind="chat")[0] == "standard"
    tier, reason = route(config, prompt=CODE, kind="code")
    assert tier == "premium" and reason.startswith("complexity:") and ">=0.25" in reason


def test_long_prompts_still_go_up_by_length(config: AgentqConfig) -> None:
    tier, reason = route(config, prompt="word " * 2000, kind="chat")
    assert tier == "standard" and reason.startswith("length:")


@pytest.mark.parametrize(("text", "low", "high"), [
    ("thanks!", 0.0, 0.05),
    (CODE, 0.25, 0.6),
    (PROOF, 0.5, 1.0),
    ("Compare the trade-offs and plan it step by step:\n1. a\n2. b\n3. c\nWhy? How?", 0.4, 1.0),
])
def test_complexity_score(text: str, low: float, high: float) -> None:
    assert low <= score(text, count_messages([{"role": "user", "content": text}])).score <= high


def test_the_ceiling_caps_every_rule(config: AgentqConfig) -> None:
    assert route(config, prompt="x", kind="reason", tenant="capped") == (
        "standard", "kind:reason;ceiling:standard")
    assert route(config, prompt=PROOF, kind="chat", tenant="capped")[0] == "standard"
    assert route(config, prompt="x", tier="premium", tenant="capped")[0] == "standard"


def test_a_soft_budget_goes_one_tier_down_but_not_below_the_kind_floor(
        config: AgentqConfig) -> None:
    assert route(config, "soft", prompt="x", kind="summarize") == (
        "cheap", "kind:summarize;budget-soft:cheap")
    assert route(config, "soft", prompt="x", kind="reason") == (
        "standard", "kind:reason;budget-soft:standard")
    assert route(config, "soft", prompt="x", kind="reason", tenant="special") == (
        "standard", "tenant-kind:reason")  # already at the floor
    assert route(config, "soft", prompt="x", kind="classify") == ("cheap", "kind:classify")


@pytest.mark.parametrize(("tier", "floor", "expected"), [
    ("premium", "cheap", "standard"), ("standard", "cheap", "cheap"), ("cheap", "cheap", "cheap"),
    ("premium", "premium", "premium"), ("standard", "premium", "standard")])
def test_one_down(tier: str, floor: str, expected: str) -> None:
    assert one_down(tier, floor) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(("day", "month", "level"), [
    (0, 0, "ok"), (4.99, 0, "ok"), (5, 0, "soft"), (10, 0, "hard"), (0, 100, "soft"),
    (0, 150, "hard"), (9, 149, "soft")])
def test_budget_level(day: float, month: float, level: str) -> None:
    budget = BudgetConfig(daily_soft_usd=5, daily_hard_usd=10, monthly_soft_usd=100,
                          monthly_hard_usd=150)
    assert budget_level(Spend(day, month), budget) == level
    assert budget_level(Spend(day, month), None) == "ok"


def test_spend_is_counted_per_tenant_day_and_month(settings: Settings) -> None:
    async def scenario() -> None:
        redis = Redis.from_url(settings.redis_url)
        ledger = SpendLedger(redis, Names(settings.namespace))
        jan_31, feb_1 = 1_706_700_000.0, 1_706_790_000.0  # 2024-01-31 and 2024-02-01 (UTC)
        await ledger.add("a", 0.000_123, jan_31)
        await ledger.add("a", 1.5, jan_31)
        await ledger.add("b", 7.0, jan_31)
        await ledger.add("a", 2.0, feb_1)
        assert await ledger.spend("a", jan_31) == Spend(1.500_123, 1.500_123)
        assert await ledger.spend("a", feb_1) == Spend(2.0, 2.0)
        assert await ledger.spend("b", feb_1) == Spend(0.0, 0.0)
        await redis.aclose()

    asyncio.run(scenario())


def test_the_example_tier_table_loads() -> None:
    config = load_config(ROOT / "agentq.example.toml")
    assert [e.model for e in config.tiers["cheap"].models] == ["gpt-4o-mini", "claude-3-5-haiku"]
    acme = config.tenant("acme")
    assert acme.ceiling == "standard" and acme.budget and acme.budget.hard_action == "hold"
    # The semantic layer is opt-in per kind: the example opts no kind in.
    assert config.cache.semantic_threshold("classify") is None


BUDGETS = """
[tenants.spender.budget]
daily_soft_usd = 0.000001
daily_hard_usd = 0.000002
hard_action = "fail"

[tenants.thrifty.budget]
daily_soft_usd = 0.000001

[tenants.patient.budget]
daily_hard_usd = 0.000001
hard_action = "hold"
hold_s = 0.25
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CostStack]:
    with cost_stack(tmp_path_factory.mktemp("routing"), extra=BUDGETS) as running:
        yield running


def test_budgets_through_the_stack(stack: CostStack) -> None:
    def task(tenant: str, kind: str = "summarize") -> dict[str, object]:
        return {"tenant": tenant, "kind": kind, "prompt": f"Summarise: {uuid.uuid4()}"}

    [first] = stack.run([task("thrifty")])
    assert first["tier"] == "standard" and first["route_reason"] == "kind:summarize"
    [second] = stack.run([task("thrifty")])  # past the soft limit now: one tier down
    assert second["tier"] == "cheap" and "budget-soft:cheap" in second["route_reason"]

    stack.run([task("spender"), task("spender")])  # these use up the hard limit
    [refused] = stack.run([task("spender")])
    assert refused["status"] == "failed" and refused["error"]["code"] == "budget_exceeded"

    stack.run([task("patient")])
    held_id = stack.submit([task("patient")])[0]
    with pytest.raises(AssertionError):  # held, re-looked at every 0.25 s, never answered
        stack.wait([held_id], timeout=2)
