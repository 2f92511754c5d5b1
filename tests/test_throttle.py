"""What the worker charges the shared limiter for a call: pure functions."""

from __future__ import annotations

import pytest

from services.common.config import ModelEntry
from services.common.models import Task, Usage
from services.common.tokens import count_messages
from services.worker.limiter import PoolLimits
from services.worker.throttle import (
    DEFAULT_COMPLETION_ESTIMATE,
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
