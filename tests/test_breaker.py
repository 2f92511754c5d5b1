"""The circuit breaker: a pure state machine, and the fallback it drives in a real worker."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from bench.cost_stack import PRICES, CostStack, cost_stack
from bench.stack import wait_until
from services.common.config import ModelEntry
from services.common.cost_config import BreakerConfig
from services.worker.breaker import Breaker, Breakers, allow, current, on_failure, on_success

CONFIG = BreakerConfig(failures=3, window_s=10, cooldown_s=5)


def _failures(times: list[float]) -> Breaker:
    breaker = Breaker()
    for t in times:
        breaker = on_failure(breaker, t, CONFIG)
    return breaker


def test_opens_after_n_failures_within_the_window() -> None:
    assert _failures([0, 1]).state == "closed"
    assert _failures([0, 1, 2]).state == "open"


def test_failures_outside_the_window_do_not_count() -> None:
    assert _failures([0, 1, 11]).state == "closed"
    assert _failures([2, 9, 11]).state == "open"


def test_success_resets_the_count() -> None:
    assert on_failure(on_success(_failures([0, 1])), 2, CONFIG).state == "closed"


def test_open_refuses_until_the_cooldown_then_lets_one_probe_through() -> None:
    opened = _failures([0, 1, 2])
    assert allow(opened, 6.9, CONFIG) == (False, opened)
    assert current(opened, 7.0, CONFIG).state == "half_open"
    allowed, probing = allow(opened, 7.0, CONFIG)
    assert allowed and probing.probing
    assert allow(probing, 7.1, CONFIG)[0] is False  # one probe at a time


@pytest.mark.parametrize(("outcome", "state"), [("success", "closed"), ("failure", "open")])
def test_the_probe_decides(outcome: str, state: str) -> None:
    _, probing = allow(_failures([0, 1, 2]), 7.0, CONFIG)
    after = on_success(probing) if outcome == "success" else on_failure(probing, 7.5, CONFIG)
    assert after.state == state
    if state == "open":
        assert after.opened_at == 7.5


def test_breakers_pick_the_next_entry_while_the_first_is_open() -> None:
    first = ModelEntry(provider="a", model="m1", input_per_mtok=1, output_per_mtok=1)
    second = ModelEntry(provider="b", model="m2", input_per_mtok=1, output_per_mtok=1)
    breakers = Breakers(CONFIG)
    for t in (0, 1, 2):
        breakers.outcome(first, t, healthy=False)
    assert breakers.pick([first, second], 3) is second
    assert breakers.pick([first, second], 8) is first  # half-open: the probe
    assert breakers.pick([first, second], 8.1) is second  # while the probe runs
    breakers.outcome(first, 8.2, healthy=None)  # a 429 says nothing: probe again
    assert breakers.pick([first, second], 8.3) is first
    breakers.outcome(first, 8.4, healthy=True)
    assert breakers.state(first, 8.5) == "closed"
    for t in (10, 11, 12):
        breakers.outcome(first, t, healthy=False)
        breakers.outcome(second, t, healthy=False)
    assert breakers.pick([first, second], 13) is first  # all open: try the first anyway


BREAKER = """
[breaker]
failures = 3
window_s = 30
cooldown_s = 3
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CostStack]:
    tiers = {"cheap": ["gpt-4o-mini", "claude-3-5-haiku"], "standard": ["gpt-4o"],
             "premium": ["o1"]}
    with cost_stack(tmp_path_factory.mktemp("breaker"), tiers=tiers, extra=BREAKER) as running:
        yield running


def test_a_failing_model_falls_back_to_the_next_entry_until_it_recovers(
        stack: CostStack) -> None:
    stack.control(fail_next={"count": 3, "status": 500})
    [first] = stack.run([{"kind": "classify", "prompt": f"breaker one {uuid.uuid4()}"}])
    assert first["status"] == "succeeded" and first["model"] == "claude-3-5-haiku", first
    assert first["attempts"] == 4
    usage = first["usage"]
    price_in, price_out = PRICES["claude-3-5-haiku"]
    assert first["cost_usd"] == pytest.approx(
        (usage["prompt_tokens"] * price_in + usage["completion_tokens"] * price_out) / 1e6)
    [second] = stack.run([{"kind": "classify", "prompt": f"breaker two {uuid.uuid4()}"}])
    assert second["model"] == "claude-3-5-haiku" and second["attempts"] == 1
    assert stack.stats()["by_model"]["gpt-4o-mini"]["errors"] == 3

    def back_on_the_primary() -> bool:
        [result] = stack.run([{"kind": "classify", "prompt": f"breaker later {uuid.uuid4()}"}])
        return result["model"] == "gpt-4o-mini"

    wait_until(back_on_the_primary, 15, "the breaker to half-open and close", interval=0.5)
