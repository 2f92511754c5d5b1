"""What the worker charges the shared limiter for a call, and what a 429 leads to: pure
functions."""

from __future__ import annotations

import pytest

from services.common.config import ModelEntry
from services.common.models import Task, Usage
from services.common.tokens import count_messages
from services.worker.limiter import PoolLimits
from services.worker.throttle import (
    DEFAULT_COMPLETION_ESTIMATE,
    CallClock,
    after_refusal,
    charged_tokens,
    estimate_tokens,
    pools_of,
)


def test_estimate_is_the_prompt_plus_the_reserved_answer() -> None:
    task = Task(prompt="How many moons has Mars?", max_tokens=64)
    prompt = count_messages(m.model_dump() for m in task.messages)
    assert estimate_tokens(task) == prompt + 64
    assert estimate_tokens(Task(prompt="x")) == count_messages(
        [{"role": "user", "content": "x"}]) + DEFAULT_COMPLETION_ESTIMATE


@pytest.mark.parametrize(("counts", "completion", "charged"), [
    ("reserved", 10, 100 + 64),  # a short answer keeps its reservation: no credit back
    ("reserved", 64, 100 + 64),
    ("used", 10, 100 + 10),  # a provider counting real usage gets the rest back
])
def test_charged_tokens(counts: str, completion: int, charged: int) -> None:
    task = Task(prompt="x", max_tokens=64)
    usage = Usage(prompt_tokens=100, completion_tokens=completion)
    assert charged_tokens(task, usage, counts) == charged


def test_a_call_draws_from_its_provider_pool_and_its_model_pool_when_limited() -> None:
    entry = ModelEntry(provider="openai", model="gpt-4o", input_per_mtok=2.5,
                       output_per_mtok=10)
    pools = {"openai": PoolLimits(rpm=500), "openai/gpt-4o": PoolLimits(tpm=30_000),
             "other": PoolLimits(rpm=1)}
    assert pools_of(entry, pools) == ["openai", "openai/gpt-4o"]
    # No limits known (yet: none configured, advertised or adapted): nothing to pace.
    assert pools_of(entry, {"openai": PoolLimits()}) == []


@pytest.mark.parametrize(("since", "in_hand_for_s", "after"), [
    (None, 0.0, "again"),  # the first 429: the whole budget is left
    (1000.0, 10.0, "again"),
    (1000.0 - 3600.0, 10.0, "exhausted"),  # waited the whole budget since the first 429
    (1000.0, 300.0, "give_back"),  # in hand as long as a delivery may wait there
    (1000.0 - 3600.0, 300.0, "exhausted"),  # a spent budget fails even when due back
])
def test_after_a_429_a_delivery_calls_again_fails_or_goes_back(
        since: float | None, in_hand_for_s: float, after: str) -> None:
    clock = CallClock(limit_s=3600.0, since=since, in_hand_s=300.0)
    assert after_refusal(clock, 1000.0, in_hand_for_s) == after
