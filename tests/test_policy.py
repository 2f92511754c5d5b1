"""The tier policy, cache keys, retry backoff and pricing: pure functions, no broker."""

from __future__ import annotations

import random

import pytest

from services.common.cache import cache_key, cacheable
from services.common.config import AgentqConfig, load_config
from services.common.models import Task, Usage
from services.common.pricing import call_cost, saved
from services.common.topology import RETRY_LEVELS_MS, Names, retry_level
from services.router.policy import choose_tier
from services.worker.retry import backoff_ms, retry_delay_ms, should_retry


@pytest.fixture
def config() -> AgentqConfig:
    raw = load_config(None).model_dump()
    raw["tenants"] = {"capped": {"ceiling": "standard"},
                      "special": {"kinds": {"classify": "premium"}}}
    return AgentqConfig.model_validate(raw)


@pytest.mark.parametrize(("task", "tokens", "tier", "reason"), [
    ({"prompt": "x", "tier": "premium", "kind": "classify"}, 10, "premium", "hint"),
    ({"prompt": "x", "kind": "classify"}, 10, "cheap", "kind:classify"),
    ({"prompt": "x", "kind": "summarize"}, 10, "standard", "kind:summarize"),
    ({"prompt": "x", "kind": "reason"}, 10, "premium", "kind:reason"),
    ({"prompt": "x", "kind": "chat"}, 10, "cheap", "length:10"),
    ({"prompt": "x", "kind": "chat"}, 2_000, "standard", "length:2000>=1500"),
    ({"prompt": "x", "kind": "chat"}, 7_000, "premium", "length:7000>=6000"),
    ({"prompt": "x", "kind": "reason", "tenant": "capped"}, 10, "standard",
     "kind:reason;ceiling:standard"),
    ({"prompt": "x", "tier": "premium", "tenant": "capped"}, 10, "standard",
     "hint;ceiling:standard"),
    ({"prompt": "x", "kind": "classify", "tenant": "special"}, 10, "premium",
     "tenant-kind:classify"),
])
def test_choose_tier(config: AgentqConfig, task: dict, tokens: int, tier: str,
                     reason: str) -> None:
    decision = choose_tier(Task.model_validate(task), config, tokens)
    assert (decision.tier, decision.reason) == (tier, reason)


@pytest.mark.parametrize(("fields", "expected"), [
    ({}, True), ({"temperature": 0.7}, False), ({"cache": "off"}, False),
    ({"cache": "on", "temperature": 0.7}, True),
])
def test_cacheable(fields: dict, expected: bool) -> None:
    assert cacheable(Task(prompt="x", **fields)) is expected


def test_cache_key_normalises_whitespace_and_case_but_separates_tenants() -> None:
    names = Names("ns")
    a = cache_key(names, Task(prompt="Hello   World"), "cheap")
    assert a == cache_key(names, Task(prompt="hello world "), "cheap")
    assert a != cache_key(names, Task(prompt="hello world", tenant="other"), "cheap")
    assert a != cache_key(names, Task(prompt="hello world"), "standard")
    assert a != cache_key(names, Task(prompt="hello world", max_tokens=5), "cheap")
    assert a.startswith("ns:cache:exact:default:")


def test_backoff_grows_and_is_capped() -> None:
    rng = random.Random(1)
    for attempt, ceiling in [(1, 500), (2, 1000), (3, 2000), (10, 30_000)]:
        values = [backoff_ms(attempt, 500, 30_000, rng) for _ in range(200)]
        assert min(values) >= ceiling / 2
        assert max(values) <= ceiling


def test_retry_delay_honours_the_provider_hint() -> None:
    rng = random.Random(1)
    assert retry_delay_ms(1, 500, 30_000, rng, provider_hint_s=7) == 7_000
    assert retry_delay_ms(1, 500, 30_000, rng, provider_hint_s=100) == 30_000


@pytest.mark.parametrize(("retryable", "attempt", "expected"),
                         [(True, 1, True), (True, 4, True), (True, 5, False), (False, 1, False)])
def test_should_retry(retryable: bool, attempt: int, expected: bool) -> None:
    assert should_retry(retryable, attempt, max_attempts=5) is expected


@pytest.mark.parametrize(("delay", "level"), [(1, 250), (250, 250), (251, 500), (3_000, 4_000),
                                              (10**9, RETRY_LEVELS_MS[-1])])
def test_retry_level(delay: float, level: int) -> None:
    assert retry_level(delay) == level


def test_pricing_and_savings(config: AgentqConfig) -> None:
    usage = Usage(prompt_tokens=1_000_000, completion_tokens=1_000_000)
    cheap = call_cost(config.primary("cheap"), usage)
    assert cheap == pytest.approx(0.75)
    assert saved(config, usage, cheap) == pytest.approx(75.0 - 0.75)
    assert saved(config, usage, 0.0) == pytest.approx(75.0)


@pytest.mark.parametrize("bad", [
    {}, {"prompt": "x", "messages": [{"role": "user", "content": "y"}]},
    {"prompt": "x", "priority": 10}, {"prompt": "x", "temperature": -1},
    {"prompt": "x", "tier": "gold"}, {"prompt": "x", "surprise": 1},
    {"prompt": "x", "id": "has space"}, {"messages": [{"role": "robot", "content": "x"}]},
])
def test_task_rejects_bad_input(bad: dict) -> None:
    with pytest.raises(ValueError):
        Task.model_validate(bad)


def test_config_rejects_unknown_provider() -> None:
    raw = load_config(None).model_dump()
    raw["tiers"]["cheap"]["models"][0]["provider"] = "nowhere"
    with pytest.raises(ValueError, match="nowhere"):
        AgentqConfig.model_validate(raw)
