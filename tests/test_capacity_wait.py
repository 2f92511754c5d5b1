"""A 429 never fails a task: the throttle holds the pool and the call goes again, within the
task's own wait budget (AGENTQ_RATE_LIMIT_WAIT_S), apart from the attempts its own errors
spend. Driven through `ProviderCalls`, the worker's caller of the throttle."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any, cast

import pytest

from services.common.config import ModelEntry
from services.common.memory_broker import MemoryBroker
from services.common.models import Latency, Result, Task, Usage
from services.common.topology import Names
from services.worker.calls import ProviderCalls
from services.worker.controls import CostControls
from services.worker.limiter import Grant, PoolLimits, SharedLimiter
from services.worker.provider import (
    CapacityExhausted,
    Completion,
    ProviderRateLimited,
    Providers,
    ProviderUnavailable,
)
from services.worker.retry import capacity_left_s, next_attempt, should_retry
from services.worker.throttle import CallClock, Throttle

ENTRY = ModelEntry(provider="p", model="m", input_per_mtok=1, output_per_mtok=1)


@pytest.mark.parametrize(("since", "now", "limit", "left"), [
    (None, 1000.0, 3600.0, 3600.0),  # never waited: the whole budget
    (1000.0, 1000.0, 3600.0, 3600.0),
    (1000.0, 1600.0, 3600.0, 3000.0),  # counted from the first wait, across retries
    (1000.0, 4600.0, 3600.0, 0.0),
    (1000.0, 9999.0, 3600.0, 0.0),  # never negative
])
def test_capacity_left(since: float | None, now: float, limit: float, left: float) -> None:
    assert capacity_left_s(since, now, limit) == left


def test_capacity_exhausted_is_rate_limited_and_final() -> None:
    exc = CapacityExhausted("waited")
    assert exc.code == "rate_limited" and not should_retry(exc.retryable, 1, 5)
    assert should_retry(ProviderRateLimited("429").retryable, 1, 5)


@pytest.mark.parametrize(("rate_limited", "retryable", "attempt", "again"), [
    (True, True, 1, 1),  # a 429 handed back to the queue: the same attempt goes again
    (True, True, 5, 5),  # ...however many there were
    (True, False, 1, None),  # the wait budget is spent (CapacityExhausted)
    (False, True, 1, 2),  # the task's own error spends one
    (False, True, 5, None),
    (False, False, 1, None),  # a 400 is final
])
def test_next_attempt(rate_limited: bool, retryable: bool, attempt: int,
                      again: int | None) -> None:
    assert next_attempt(rate_limited, retryable, attempt, max_attempts=5) == again


class FakeLimiter:
    """Grants at once (or after `acquire_s`), and records holds."""

    def __init__(self, acquire_s: float = 0.0) -> None:
        self.limits = {"p": PoolLimits(rpm=100)}
        self.acquire_s = acquire_s
        self.acquired = 0
        self.holds: list[Mapping[str, Any]] = []
        self.settled: list[int] = []

    async def acquire(self, pool: str, tenant: str, tokens: int) -> Grant:
        self.acquired += 1
        await asyncio.sleep(self.acquire_s)
        return Grant(pool, tenant, tokens, "shared", self.acquire_s, 1)

    async def true_up(self, grant: Grant, used: int) -> None:
        self.settled.append(used)

    async def rate_limited(self, pool: str, headers: Mapping[str, str]) -> float:
        self.holds.append(headers)
        return 0.0

    async def observe_headers(self, pool: str, headers: Mapping[str, str]) -> None:
        pass


class FakeProvider:
    """Answers after `latency_s`, or raises the next of `failures` first."""

    def __init__(self, failures: list[Exception], latency_s: float = 0.0) -> None:
        self.failures = failures
        self.latency_s = latency_s
        self.calls = 0

    async def complete(self, entry: ModelEntry, task: Task) -> Completion:
        self.calls += 1
        await asyncio.sleep(self.latency_s)
        if self.failures:
            raise self.failures.pop(0)
        return Completion("ok", "m", Usage(prompt_tokens=3, completion_tokens=2), "stop")


class OneModel:
    """The cost controls' part a call uses: ENTRY always, and the outcomes it was told."""

    def __init__(self) -> None:
        self.outcomes: list[Exception | None] = []

    def pick(self, tier: str) -> ModelEntry:
        return ENTRY

    def outcome(self, entry: ModelEntry, error: Exception | None) -> None:
        self.outcomes.append(error)


async def _call(limiter: FakeLimiter, provider: FakeProvider, clock: CallClock) -> Completion:
    """Make one call as the worker does: ProviderCalls over the Throttle and the limiter."""
    calls = ProviderCalls(MemoryBroker(Names("capacity")), cast(Providers, provider),
                          cast(CostControls, OneModel()),
                          Throttle(cast(SharedLimiter, limiter), {}), concurrency=4)
    return await calls.call(Task(prompt="x"), "cheap", 1, clock)


def test_429s_are_waited_out_without_failing_the_call() -> None:
    async def body() -> None:
        limiter = FakeLimiter()
        failures: list[Exception] = [ProviderRateLimited("slow down", {"retry-after": "0"})] * 7
        clock = CallClock(limit_s=3600.0)
        completion = await _call(limiter, FakeProvider(failures), clock)
        assert completion.text == "ok"
        assert clock.rate_limited == 7 and len(limiter.holds) == 7 and limiter.acquired == 8
        assert clock.since is not None and clock.since <= time.time()

    asyncio.run(body())


def test_the_wait_budget_ends_in_rate_limited_naming_the_wait() -> None:
    async def body() -> None:
        clock = CallClock(limit_s=60.0, since=time.time() - 61)  # spent on an earlier delivery
        failures: list[Exception] = [ProviderRateLimited("Rate limit exceeded")] * 3
        with pytest.raises(CapacityExhausted) as caught:
            await _call(FakeLimiter(), FakeProvider(failures), clock)
        message = str(caught.value)
        assert caught.value.code == "rate_limited"
        assert "waited 61 s" in message and "'p'" in message
        assert "AGENTQ_RATE_LIMIT_WAIT_S" in message
        assert "Rate limit exceeded" in message

    asyncio.run(body())


def test_a_hold_longer_than_the_budget_ends_the_wait() -> None:
    async def body() -> None:
        clock = CallClock(limit_s=0.2)
        with pytest.raises(CapacityExhausted):
            await _call(FakeLimiter(acquire_s=5.0), FakeProvider([]), clock)
        assert clock.since is not None and 0.15 < clock.limiter_s < 1.0

    asyncio.run(body())


def test_the_tasks_own_errors_are_not_waited_out() -> None:
    async def body() -> None:
        limiter = FakeLimiter()
        clock = CallClock(limit_s=3600.0)
        with pytest.raises(ProviderUnavailable):
            await _call(limiter, FakeProvider([ProviderUnavailable("HTTP 503")]), clock)
        assert limiter.acquired == 1 and limiter.settled == [0] and clock.since is None

    asyncio.run(body())


def test_limiter_and_provider_time_are_apart() -> None:
    async def body() -> None:
        clock = CallClock()
        await _call(FakeLimiter(acquire_s=0.2), FakeProvider([], latency_s=0.1), clock)
        assert 0.19 < clock.limiter_s < 0.5 and 0.09 < clock.llm_s < 0.19

    asyncio.run(body())


def test_results_without_a_limiter_time_still_parse() -> None:
    old = Result(task_id="t", tenant="d", status="succeeded",
                 latency_ms=Latency(queue=1, llm=2, total=3))
    body = old.model_dump_json().replace(',"limiter":null', "")
    assert '"limiter"' not in body
    assert Result.model_validate_json(body).latency_ms.limiter is None
    assert Latency(limiter=5).limiter == 5


def test_a_429_with_no_pool_to_hold_waits_the_hint_in_the_call() -> None:
    async def body() -> None:
        limiter = FakeLimiter()
        limiter.limits = {"p": PoolLimits()}  # nothing known, no learner to start the rule
        clock = CallClock(limit_s=3600.0)
        failures: list[Exception] = [ProviderRateLimited("429", {"retry-after-ms": "200"})]
        started = time.monotonic()
        await _call(limiter, FakeProvider(failures), clock)
        assert 0.2 <= time.monotonic() - started < 1.0 and clock.limiter_s >= 0.2
        assert limiter.acquired == 0 and limiter.holds == []

    asyncio.run(body())


def test_a_long_wait_in_hand_goes_back_to_the_queue() -> None:
    async def body() -> None:
        clock = CallClock(limit_s=3600.0, in_hand_s=0.0)
        failures: list[Exception] = [ProviderRateLimited("429")] * 3
        with pytest.raises(ProviderRateLimited) as caught:
            await _call(FakeLimiter(), FakeProvider(failures), clock)
        assert not isinstance(caught.value, CapacityExhausted) and caught.value.retryable
        assert clock.since is not None  # carried in the header to the next delivery

    asyncio.run(body())
