"""Limits learned, not only configured: the adaptive rule and the configured/advertised choice
as pure functions, and their sharing through Redis between workers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator

import pytest
from redis.asyncio import Redis

from bench.stack import delete_redis_keys
from services.common.settings import Settings
from services.common.topology import Names
from services.worker.limiter import PoolLimits, SharedLimiter
from services.worker.limiter.learned import LearnedLimits, learned_key
from services.worker.limiter.learning import (
    Adaptive,
    AdaptiveParams,
    Lowered,
    adaptive_limits,
    combine,
    decrease,
    effective,
    increase,
    observed_rpm,
    rule_start,
)

P = AdaptiveParams()
REDIS_URL = Settings().redis_url

# -- the adaptive rule -------------------------------------------------------------------------


def test_slow_start_doubles_per_minute_at_the_limit() -> None:
    state = Adaptive.start(P)
    assert state.rpm == P.initial_rpm and state.threshold == 0
    # A minute at the limit is `rpm` saturated successes: the limit doubles.
    assert increase(state, int(state.rpm), 0.0, P).rpm == 2 * P.initial_rpm


def test_after_a_429_the_increase_is_additive() -> None:
    state = decrease(Adaptive(rpm=100.0), now=1000.0, params=P)
    assert state.rpm == pytest.approx(70.0) and state.threshold == pytest.approx(70.0)
    assert increase(state, 10, 1010.0, P).rpm == pytest.approx(70.0 + 10 * P.step)
    assert increase(state, 0, 1010.0, P) == state  # no saturated success, nothing learned


def test_a_minute_without_429s_starts_slow_start_again() -> None:
    state = decrease(Adaptive(rpm=100.0), now=1000.0, params=P)
    assert increase(state, 10, 1000.0 + P.relax_s, P).rpm == pytest.approx(
        70.0 + 10 * P.slow_start_step)


def test_one_burst_of_429s_decreases_once() -> None:
    once = decrease(Adaptive(rpm=100.0), now=1000.0, params=P)
    assert decrease(once, now=1000.0 + P.cooldown_s / 2, params=P) == once
    again = decrease(once, now=1000.0 + P.cooldown_s, params=P)
    assert again.rpm == pytest.approx(49.0) and again.decreased_at == 1000.0 + P.cooldown_s


def test_the_limit_stays_within_its_bounds() -> None:
    assert decrease(Adaptive(rpm=1.2), 1.0, P).rpm == P.min_rpm
    assert increase(Adaptive(rpm=P.max_rpm - 1), 1000, 0.0, P).rpm == P.max_rpm


def test_the_rule_starts_from_the_rate_seen() -> None:
    now = 1000.0
    # 30 successes in this worker's first 2 s: 900 RPM, times 2 workers.
    assert observed_rpm([now - 1] * 30, now - 2, now, 2, P) == pytest.approx(1800.0)
    # ... in its first 0.1 s: taken over min_observed_s.
    assert observed_rpm([now] * 30, now - 0.1, now, 1, P) == pytest.approx(
        30 / P.min_observed_s * 60)
    assert observed_rpm([now - 61] * 30, now - 120, now, 1, P) == 0.0  # too old
    assert observed_rpm([now - 5] * 30, now - 600, now, 1, P) == pytest.approx(30.0)
    assert rule_start(360.0, P) == Adaptive(rpm=360.0)
    assert rule_start(0.0, P) == Adaptive(rpm=P.initial_rpm)


def test_an_adaptive_pool_runs_on_a_short_bucket() -> None:
    assert adaptive_limits(Adaptive(rpm=29.6), P) == PoolLimits(rpm=30, tpm=0, burst_s=P.burst_s)
    assert adaptive_limits(Adaptive(rpm=0.2), P).rpm == 1


def _simulate(real_rpm: float, seconds: int, state: Adaptive) -> tuple[list[float], int, int]:
    """A provider bucket of `real_rpm` (a minute's worth, like OpenAI's) against a client that
    always has work and sends at its adaptive limit; return the limit each second, calls, 429s."""
    level, calls, refused, owed = real_rpm, 0, 0, 0.0
    trace = []
    for second in range(seconds):
        level = min(real_rpm, level + real_rpm / 60)
        owed += state.rpm / 60
        while owed >= 1:
            owed -= 1
            calls += 1
            if level >= 1:
                level -= 1
                state = increase(state, 1, float(second), P)
            else:
                refused += 1
                state = decrease(state, float(second), P)
        trace.append(state.rpm)
    return trace, calls, refused


@pytest.mark.parametrize("real_rpm", [30, 300, 3000])
def test_aimd_converges_near_the_real_limit_with_few_429s(real_rpm: int) -> None:
    # From a first 429 with nothing seen before it: 60 RPM, decreased.
    trace, calls, refused = _simulate(real_rpm, 30 * 60, decrease(rule_start(0, P), 0.0, P))
    steady = trace[-600:]  # the last ten minutes
    assert 0.9 * real_rpm <= sum(steady) / len(steady) <= 1.1 * real_rpm
    assert min(steady) >= 0.7 * real_rpm
    assert refused / calls < 0.05
    assert next(i for i, rpm in enumerate(trace) if rpm >= 0.9 * real_rpm) < 6 * 60


def test_passing_429s_are_forgotten() -> None:
    # A burst of 429s from a server without limits: the rule grows out of them.
    trace, _, refused = _simulate(1_000_000, 300, decrease(rule_start(0, P), 0.0, P))
    assert refused == 0 and trace[-1] > 1_000


# -- configured against advertised -------------------------------------------------------------


def test_the_configured_limits_stand_without_headers() -> None:
    assert effective(PoolLimits(rpm=600), None, None) == (PoolLimits(rpm=600), "config", [])


def test_advertised_limits_fill_in_what_is_not_configured() -> None:
    limits, source, lowered = effective(PoolLimits(), 30, 40_000)
    assert (limits, source, lowered) == (PoolLimits(rpm=30, tpm=40_000), "headers", [])


def test_the_lower_limit_wins_and_says_so() -> None:
    limits, source, lowered = effective(PoolLimits(rpm=600, tpm=1_000), 30, 90_000)
    assert limits == PoolLimits(rpm=30, tpm=1_000) and source == "headers"
    assert lowered == [Lowered("rpm", 600, 30)]


def test_the_slowest_models_advertised_limits_hold_for_the_pool() -> None:
    assert combine({"mini": (30_000, 150_000_000), "o1": (500, 30_000_000),
                    "other": (None, None)}) == (500, 30_000_000)
    assert combine({"a": (None, 1000), "b": (60, None)}) == (60, 1000)
    assert combine({}) == (None, None)


def test_a_higher_advertised_limit_does_not_raise_the_configured_one() -> None:
    assert effective(PoolLimits(rpm=100), 500, None) == (PoolLimits(rpm=100), "config", [])


# -- shared through Redis ----------------------------------------------------------------------


@pytest.fixture
def names() -> Iterator[Names]:
    ns = Names(f"agentq_test_learned_{uuid.uuid4().hex[:8]}")
    yield ns
    delete_redis_keys(REDIS_URL, ns.ns)


def _run(main: Callable[[Redis], Awaitable[None]]) -> None:
    async def body() -> None:
        redis = Redis.from_url(REDIS_URL)
        try:
            await main(redis)
        finally:
            await redis.aclose()

    asyncio.run(body())


def _worker(redis: Redis, names: Names, configured: PoolLimits,
            lowered: list[tuple[str, Lowered]] | None = None
            ) -> tuple[SharedLimiter, LearnedLimits]:
    limiter = SharedLimiter(redis, names, {"p": configured})

    async def on_lowered(pool: str, change: Lowered) -> None:
        if lowered is not None:
            lowered.append((pool, change))

    return limiter, LearnedLimits(redis, names, limiter, {"p": configured}, ["p"],
                                  on_lowered=on_lowered)


def test_a_pool_without_limits_is_unpaced_until_a_429(names: Names) -> None:
    async def main(redis: Redis) -> None:
        limiter, learned = _worker(redis, names, PoolLimits())
        assert learned.source("p") == "unlimited" and limiter.limits["p"] == PoolLimits()
        for _ in range(30):  # 30 successes in this worker's first moments
            await learned.answered("p", {}, saturated=False)
        await learned.refused("p", {"retry-after": "1"})
        assert learned.source("p") == "adaptive"
        seen = 30 / P.min_observed_s * 60
        assert limiter.limits["p"] == PoolLimits(rpm=round(seen * P.decrease),
                                                 burst_s=P.burst_s)

    _run(main)


def test_other_workers_take_up_the_rule_one_began(names: Names) -> None:
    async def main(redis: Redis) -> None:
        first, first_learned = _worker(redis, names, PoolLimits())
        second, second_learned = _worker(redis, names, PoolLimits())
        await first_learned.refused("p", {})  # nothing seen: from initial_rpm
        assert first.limits["p"].rpm == round(P.initial_rpm * P.decrease)
        await second_learned.poll()
        assert second.limits["p"] == first.limits["p"]
        assert second_learned.source("p") == "adaptive"

    _run(main)


def test_limits_one_worker_reads_from_headers_are_every_workers(names: Names) -> None:
    async def main(redis: Redis) -> None:
        lowered: list[tuple[str, Lowered]] = []
        first, first_learned = _worker(redis, names, PoolLimits(rpm=600), lowered)
        second, second_learned = _worker(redis, names, PoolLimits(rpm=600))
        await first_learned.answered("p", {"x-ratelimit-limit-requests": "30",
                                           "x-ratelimit-limit-tokens": "50000"}, False)
        assert first.limits["p"].rpm == 30 and first.limits["p"].tpm == 50_000
        assert lowered == [("p", Lowered("rpm", 600, 30))]
        await first_learned.answered("p", {"x-ratelimit-limit-requests": "30"}, False)
        assert len(lowered) == 1  # warned once
        assert second.limits["p"].rpm == 600
        await second_learned.poll()
        assert second.limits["p"].rpm == 30 and second_learned.source("p") == "headers"

    _run(main)


def test_the_adaptive_limit_is_shared(names: Names) -> None:
    async def main(redis: Redis) -> None:
        first, first_learned = _worker(redis, names, PoolLimits())
        second, second_learned = _worker(redis, names, PoolLimits())
        # Started by a 429 some time ago (its cooldown is over), at 60 RPM.
        await redis.hset(learned_key(names, "p"), mapping={
            "rpm": repr(P.initial_rpm), "threshold": "0", "decreased_at": "1"})
        await first_learned.poll()
        await second_learned.poll()
        for _ in range(10):
            await first_learned.answered("p", {}, saturated=True)
        await first_learned.answered("p", {}, saturated=False)  # not at the limit: no signal
        await first_learned.poll()
        assert first.limits["p"].rpm == int(P.initial_rpm) + 10
        await second_learned.poll()
        assert second.limits["p"].rpm == int(P.initial_rpm) + 10
        await second_learned.refused("p", {"retry-after": "1"})
        await first_learned.refused("p", {})  # the same burst: one decrease
        expected = round((P.initial_rpm + 10) * P.decrease)
        assert second.limits["p"].rpm == expected
        await first_learned.poll()
        assert first.limits["p"].rpm == expected
        fields = await redis.hgetall(learned_key(names, "p"))
        assert float(fields[b"threshold"]) == pytest.approx((P.initial_rpm + 10) * P.decrease)

    _run(main)


def test_headers_end_the_adaptive_rule(names: Names) -> None:
    async def main(redis: Redis) -> None:
        first, first_learned = _worker(redis, names, PoolLimits())
        second, second_learned = _worker(redis, names, PoolLimits())
        await first_learned.refused("p", {"x-ratelimit-limit-requests": "120"})
        assert first.limits["p"] == PoolLimits(rpm=120)  # the usual bucket, not a guess's
        await second_learned.refused("p", {})  # no adaptive rule over real limits
        await second_learned.poll()
        assert second.limits["p"] == PoolLimits(rpm=120) and second_learned.source("p") == (
            "headers")

    _run(main)


def test_models_with_other_limits_do_not_swing_the_pool(names: Names) -> None:
    async def main(redis: Redis) -> None:
        first, first_learned = _worker(redis, names, PoolLimits())
        second, second_learned = _worker(redis, names, PoolLimits())
        for _ in range(3):  # answers of two models alternate
            await first_learned.answered("p", {"x-ratelimit-limit-requests": "30000"}, False,
                                         "mini")
            await first_learned.answered("p", {"x-ratelimit-limit-requests": "500"}, False,
                                         "o1")
            assert first.limits["p"].rpm == 500
        await second_learned.poll()
        assert second.limits["p"].rpm == 500
        fields = await redis.hgetall(learned_key(names, "p"))
        assert fields[b"advertised_rpm:mini"] == b"30000" and fields[b"advertised_rpm:o1"] == (
            b"500")

    _run(main)
