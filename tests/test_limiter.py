"""The shared limiter: pure bucket and fairness arithmetic, the Lua against it, and real Redis.

Integration tests run against the Redis of AGENTQ_REDIS_URL, each in a namespace of its own;
the outage test starts, kills and restarts a Redis server of its own on a free port. Timing
is asserted only as counts with margins, never as latencies.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import multiprocessing
import random
import subprocess
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, cast

import pytest
from redis.asyncio import Redis

from bench.stack import delete_redis_keys, free_port, start_redis
from services.common.settings import Settings
from services.common.topology import Names
from services.worker.limiter import (
    LimiterOptions,
    PoolLimits,
    SharedLimiter,
    TenantShare,
    UnknownPool,
    bucket,
    parse_duration,
    remaining_from_headers,
    retry_after_from_headers,
)
from services.worker.limiter.admission import PoolParams, PoolState, Request, admit
from services.worker.limiter.bucket import BucketState
from services.worker.limiter.fairness import FairParams, TenantState, effective_weight, joining_vt
from services.worker.limiter.shared import LIMITER_LUA, PoolKeys, workers_key

REDIS_URL = Settings().redis_url


def close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-9)


# -- bucket.py: the arithmetic -------------------------------------------------------------

@pytest.mark.parametrize(("level", "elapsed", "limit", "burst_s", "expected"), [
    (0.0, 5.0, 60, 60.0, 5.0),  # 1 per second
    (0.0, 0.5, 600, 60.0, 5.0),  # 10 per second
    (10.0, 1000.0, 60, 60.0, 60.0),  # capped at a minute's worth
    (0.0, 1000.0, 600, 1.0, 10.0),  # capped at a 1 s burst
    (-30.0, 10.0, 60, 60.0, -20.0),  # debt is repaid at the same rate
    (5.0, -3.0, 60, 60.0, 5.0),  # a clock step backwards refills nothing
])
def test_refill(level: float, elapsed: float, limit: int, burst_s: float,
                expected: float) -> None:
    state = BucketState(level, 100.0)
    assert bucket.level_at(state, limit, 100.0 + elapsed, burst_s) == pytest.approx(expected)


@pytest.mark.parametrize(("rpm", "burst_s", "burst"), [(600, 1.0, 10), (60, 60.0, 60),
                                                       (1200, 0.5, 10)])
def test_burst_then_smooth_rate(rpm: int, burst_s: float, burst: int) -> None:
    req: BucketState | None = None
    for _ in range(burst):  # a missing bucket is full: the whole burst passes at once
        d = bucket.decide(req, None, rpm, 0, 0, 0.0, burst_s)
        assert d.granted
        req = d.requests_state
    d = bucket.decide(req, None, rpm, 0, 0, 0.0, burst_s)
    assert not d.granted and d.wait_s == pytest.approx(60 / rpm)
    assert d.requests_state == req  # nothing taken
    assert bucket.decide(req, None, rpm, 0, 0, d.wait_s, burst_s).granted


@pytest.mark.parametrize(("req_level", "tok_level", "granted", "wait_s"), [
    (1.0, 100.0, True, 0.0),
    (0.5, 100.0, False, 0.05),  # requests short: 0.5 request at 10/s
    (1.0, 40.0, False, 0.6),  # tokens short: 60 tokens at 100/s
    (0.0, 0.0, False, 1.0),  # both short: the longer wait
])
def test_both_buckets_must_have_capacity(req_level: float, tok_level: float, granted: bool,
                                         wait_s: float) -> None:
    req, tok = BucketState(req_level, 0.0), BucketState(tok_level, 0.0)
    d = bucket.decide(req, tok, 600, 6000, 100, 0.0)
    assert d.granted is granted
    assert d.wait_s == pytest.approx(wait_s)
    if granted:
        assert (d.requests_level, d.tokens_level) == (req_level - 1, tok_level - 100)
    else:
        assert (d.requests_state, d.tokens_state) == (req, tok)


def test_request_larger_than_the_bucket_waits_for_a_full_one_then_owes() -> None:
    tok = BucketState(0.0, 0.0)
    d = bucket.decide(None, tok, 0, 600, 50, 0.0, burst_s=1.0)  # capacity 10 tokens
    assert not d.granted and d.wait_s == pytest.approx(1.0)
    d = bucket.decide(None, tok, 0, 600, 50, 1.0, burst_s=1.0)
    assert d.granted and d.tokens_level == pytest.approx(-40.0)


def test_unlimited_buckets_always_grant() -> None:
    d = bucket.decide(None, None, 0, 0, 10**9, 0.0)
    assert d.granted and d.requests_level is None and d.tokens_level is None


@pytest.mark.parametrize(("level", "delta", "expected"), [
    (1000.0, -4000, 5000.0),  # credit back an over-estimate
    (1000.0, 3000, -2000.0),  # debit an under-estimate, into debt
    (5500.0, -4000, 6000.0),  # a credit never overfills the bucket
    (1000.0, 0, 1000.0),
])
def test_true_up(level: float, delta: int, expected: float) -> None:
    state = bucket.true_up(BucketState(level, 0.0), delta, 6000, 0.0, burst_s=60.0)
    assert state is not None and state.level == pytest.approx(expected)


@pytest.mark.parametrize(("level", "limit", "expected"), [
    (None, 600, 0.0),  # no bucket yet: full
    (540.0, 600, 0.0),  # full (54 s of 600 RPM)
    (270.0, 600, 0.5),
    (0.0, 600, 1.0),
    (-50.0, 600, 1.0),  # in debt: still 1
    (10.0, 0, 0.0),  # unlimited
])
def test_depletion(level: float | None, limit: float, expected: float) -> None:
    assert bucket.depletion(level, limit) == pytest.approx(expected)


@pytest.mark.parametrize(("level", "remaining", "expected"), [
    (50.0, 10.0, 10.0),  # the provider has less: follow it down
    (50.0, 80.0, 50.0),  # the provider has more: keep ours
    (50.0, None, 50.0),
])
def test_correct_only_lowers(level: float, remaining: float | None, expected: float) -> None:
    state = bucket.correct(BucketState(level, 0.0), remaining, 600, 0.0)
    assert bucket.level_at(state, 600, 0.0) == expected


def test_bucket_expires_when_it_would_be_full_again() -> None:
    assert bucket.expiry_ms(10.0, 600, burst_s=1.0) == 1000  # already full
    assert bucket.expiry_ms(0.0, 600, burst_s=1.0) == 2000  # 1 s to refill, plus 1 s


# -- headers.py ------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "seconds"), [
    ("1s", 1.0), ("6m0s", 360.0), ("120ms", 0.12), ("0.5s", 0.5), ("1h2m3.5s", 3723.5),
    ("2", 2.0), ("", None), ("soon", None), ("5x", None), ("1s junk", None),
])
def test_parse_duration(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


@pytest.mark.parametrize(("headers", "seconds"), [
    ({"retry-after-ms": "250", "retry-after": "3"}, 0.25),
    ({"Retry-After": "3"}, 3.0),
    ({"retry-after": "Wed, 21 Oct 2015 07:28:05 GMT"}, 5.0),  # an HTTP date, 5 s ahead
    ({"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "6m0s",
      "x-ratelimit-remaining-requests": "0", "x-ratelimit-remaining-tokens": "9000"}, 1.0),
    ({"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "20ms",
      "x-ratelimit-remaining-requests": "3", "x-ratelimit-remaining-tokens": "0"}, 0.02),
    ({"x-ratelimit-reset-requests": "2s", "x-ratelimit-reset-tokens": "500ms"}, 0.5),
    ({"content-type": "application/json"}, None),
])
def test_retry_after_from_headers(headers: dict[str, str], seconds: float | None) -> None:
    now = 1445412480.0  # 2015-10-21 07:28:00 GMT
    assert retry_after_from_headers(headers, now=now) == (
        pytest.approx(seconds) if seconds is not None else None)


def test_remaining_from_headers() -> None:
    assert remaining_from_headers({"X-RateLimit-Remaining-Requests": "59",
                                   "x-ratelimit-remaining-tokens": "149984"}) == (59, 149984)
    assert remaining_from_headers({"x-ratelimit-remaining-tokens": "nan"}) == (None, None)


# -- fairness.py and admission.py: the fair share, simulated -----------------------------------

@pytest.mark.parametrize(("vt", "slowest", "active", "expected"), [
    (None, 100.0, False, 100.0),  # a new tenant starts level with the slowest
    (10.0, 100.0, False, 100.0),  # idling banked no credit
    (500.0, 100.0, False, 150.0),  # an old lead is forgiven down to the window (50)
    (120.0, 100.0, False, 120.0),
    (10.0, 100.0, True, 10.0),  # an active tenant keeps its own
    (None, None, False, 0.0),
])
def test_joining_vt(vt: float | None, slowest: float | None, active: bool,
                    expected: float) -> None:
    assert joining_vt(vt, slowest, 50.0, active) == expected


@pytest.mark.parametrize(("weight", "min_share", "others", "expected"), [
    (1.0, 0.0, 3.0, 1.0), (1.0, 0.5, 3.0, 3.0), (5.0, 0.5, 3.0, 5.0), (1.0, 0.5, 0.0, 1.0)])
def test_effective_weight(weight: float, min_share: float, others: float,
                          expected: float) -> None:
    assert effective_weight(weight, min_share, others) == pytest.approx(expected)


def simulate(waiters: list[tuple[str, int]], params: PoolParams,
             shares: dict[str, TenantShare], seconds: float) -> dict[str, float]:
    """Run backlogged waiters against the pure model on a simulated clock; return tokens."""
    state = PoolState()
    queue = [(0.0, i) for i in range(len(waiters))]
    tokens: dict[str, float] = defaultdict(float)
    while queue:
        now, i = heapq.heappop(queue)
        if now > seconds:
            break
        tenant, cost = waiters[i]
        share = shares.get(tenant, TenantShare())
        outcome, state = admit(state, Request(tenant, cost, share.weight,
                                              share.bounded_min_share), params, now)
        if outcome.granted:
            tokens[tenant] += cost
        # Like SharedLimiter, sleep at least 1 ms: a wait of a few ulps would not move the clock.
        heapq.heappush(queue, (now + max(0.001, 0.0 if outcome.granted else outcome.wait_s), i))
    return tokens


def _params(tpm: int, window_s: float) -> PoolParams:
    return PoolParams(rpm=0, tpm=tpm, fair=FairParams(window=window_s * tpm / 60, grace_s=1.0),
                      burst_s=0.5)


FLOOD = [("flood", 500)] * 20
LIGHT = [("light", 1500)] * 2


def test_simulated_flood_cannot_starve_a_light_tenant() -> None:
    tokens = simulate(FLOOD + LIGHT, _params(360_000, 0.2), {}, 60.0)
    assert tokens["light"] / sum(tokens.values()) >= 0.9 * 0.5
    # Without the fair share, the flood's many small requests take nearly everything.
    unfair = simulate(FLOOD + LIGHT, _params(360_000, 1e9), {}, 60.0)
    assert unfair["light"] / sum(unfair.values()) < 0.2


def test_simulated_weights_and_minimum_share() -> None:
    waiters = [("a", 400)] * 5 + [("b", 400)] * 5 + [("c", 400)] * 5
    tokens = simulate(waiters, _params(120_000, 0.2), {"a": TenantShare(weight=2.0)}, 60.0)
    assert tokens["a"] / tokens["b"] == pytest.approx(2.0, rel=0.1)
    assert tokens["b"] / tokens["c"] == pytest.approx(1.0, rel=0.1)
    tokens = simulate(waiters, _params(120_000, 0.2), {"a": TenantShare(min_share=0.6)}, 60.0)
    assert tokens["a"] / sum(tokens.values()) >= 0.9 * 0.6


# -- the Lua against the pure reference ----------------------------------------------------

@pytest.fixture
def names() -> Iterator[Names]:
    """Yield a fresh namespace on the test Redis and delete its keys afterwards."""
    ns = Names(f"agentq_test_{uuid.uuid4().hex[:8]}")
    yield ns
    delete_redis_keys(REDIS_URL, ns.ns)


def run(main: Callable[[Redis], Awaitable[None]], url: str = REDIS_URL) -> None:
    """Run an async test body with a fresh client on its own event loop."""
    async def body() -> None:
        client = Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        try:
            await main(client)
        finally:
            await client.aclose()
    asyncio.run(body())


async def redis_now(client: Redis) -> float:
    seconds, micros = await client.time()
    return seconds + micros / 1_000_000


async def read_state(client: Redis, keys: PoolKeys) -> PoolState:
    """Read a pool's whole state back from Redis, as the pure model holds it."""
    def as_bucket(h: Any) -> BucketState | None:
        return BucketState(float(h[b"level"]), float(h[b"ts"])) if h else None

    # redis-py types replies loosely (bytes or str); this client returns bytes.
    vts: dict[bytes, bytes] = cast(Any, await client.hgetall(keys.vt))
    weights: dict[bytes, bytes] = cast(Any, await client.hgetall(keys.weights))
    active: dict[bytes, float] = dict(cast(Any, await client.zrange(keys.active, 0, -1,
                                                                     withscores=True)))
    tenants = {name.decode(): TenantState(float(vt), float(weights[name]), active.get(name))
               for name, vt in vts.items()}
    return PoolState(as_bucket(await client.hgetall(keys.requests)),
                     as_bucket(await client.hgetall(keys.tokens)), 0.0, tenants)


async def scramble(client: Redis, keys: PoolKeys, params: PoolParams,
                   shares: dict[str, TenantShare], rng: random.Random) -> None:
    """Write random bucket levels, ages, virtual times and activity, as a busy pool has."""
    now = await redis_now(client)
    for key, limit in ((keys.requests, params.rpm), (keys.tokens, params.tpm)):
        cap = bucket.capacity(limit, params.burst_s)
        if rng.random() < 0.3 or limit <= 0:
            await client.delete(key)
        else:
            await client.hset(key, mapping={"level": repr(rng.uniform(-0.5 * cap, cap)),
                                            "ts": repr(now - rng.uniform(0, 90))})
    for tenant, share in shares.items():
        if rng.random() < 0.5:
            continue
        await client.hset(keys.vt, tenant, repr(rng.uniform(0, 4 * params.fair.window)))
        await client.hset(keys.weights, tenant, repr(share.weight))
        if rng.random() < 0.3:
            await client.zrem(keys.active, tenant)
        else:
            await client.zadd(keys.active, {tenant: now + rng.uniform(-2, 3)})


def acquire_args(params: PoolParams, req: Request) -> list[str]:
    f = params.fair
    return ["acquire", *(repr(float(x)) for x in (params.rpm, params.tpm, params.burst_s,
                                                   req.cost)),
            req.tenant, repr(req.weight), repr(req.min_share),
            *(repr(x) for x in (f.window, f.grace_s, f.min_wait_s, f.max_wait_s)), "600000",
            *(repr(float(x)) for x in (params.jitter, req.contenders, req.u))]


def assert_same_state(ours: PoolState, lua: PoolState) -> None:
    for mine, theirs in ((ours.requests, lua.requests), (ours.tokens, lua.tokens)):
        assert (mine is None) == (theirs is None)
        if mine is not None and theirs is not None:
            assert close(mine.level, theirs.level) and close(mine.updated_at, theirs.updated_at)
    assert set(ours.tenants) == set(lua.tenants)
    for name, mine_t in ours.tenants.items():
        theirs_t = lua.tenants[name]
        assert close(mine_t.vt, theirs_t.vt) and close(mine_t.weight, theirs_t.weight)
        assert close(mine_t.active_until, theirs_t.active_until), name


@pytest.mark.parametrize("seed", range(12))
def test_lua_agrees_with_the_pure_reference(names: Names, seed: int) -> None:
    rng = random.Random(seed)
    params = PoolParams(rpm=rng.choice([0, 30, 600, 6000]),
                        tpm=rng.choice([0, 1000, 60_000, 2_000_000]),
                        fair=FairParams(window=rng.choice([100.0, 1000.0, 20_000.0]),
                                        grace_s=rng.choice([0.5, 2.0])),
                        burst_s=rng.choice([0.5, 1.0, 60.0]), jitter=rng.choice([0.0, 0.1]))
    shares = {"a": TenantShare(), "b": TenantShare(weight=2.5),
              "c": TenantShare(weight=0.5, min_share=0.4)}
    keys = PoolKeys.of(names, "pool")
    cap_t = max(1.0, bucket.capacity(params.tpm, params.burst_s))

    async def main(client: Redis) -> None:
        script = client.register_script(LIMITER_LUA)
        for _ in range(60):
            if rng.random() < 0.3:
                await scramble(client, keys, params, shares, rng)
            before = await read_state(client, keys)
            tenant = rng.choice(sorted(shares))
            share = shares[tenant]
            roll = rng.random()
            if roll < 0.15:  # true up a real usage that differed from the estimate
                delta, w_eff = rng.randint(-int(cap_t), int(cap_t)), rng.choice([1.0, 2.5])
                tl, now = await script(keys=keys.all(), args=[
                    "true_up", repr(float(params.tpm)), repr(params.burst_s), str(delta),
                    tenant, repr(w_eff)])
                expected = bucket.true_up(before.tokens, delta, params.tpm, float(now),
                                         params.burst_s)
                after = await read_state(client, keys)
                assert (tl == b"") == (params.tpm <= 0)
                if expected is not None and after.tokens is not None:
                    assert close(expected.level, after.tokens.level)
                if tenant in before.tenants:
                    assert close(before.tenants[tenant].vt + delta / w_eff,
                                 after.tenants[tenant].vt)
                continue
            if 0.25 <= roll < 0.32:  # seed after a restart: only the buckets Redis lost are written
                if rng.random() < 0.5:
                    await client.delete(rng.choice([keys.requests, keys.tokens]))
                    before = await read_state(client, keys)
                seeds = [rng.choice([None, rng.uniform(0, 2 * cap_t)]) for _ in range(2)]
                rl, tl, now = await script(keys=keys.all(), args=[
                    "seed", repr(float(params.rpm)), repr(float(params.tpm)),
                    repr(params.burst_s), *("" if v is None else repr(v) for v in seeds)])
                after = await read_state(client, keys)
                for state, limit, v, got, reply in (
                        (before.requests, params.rpm, seeds[0], after.requests, rl),
                        (before.tokens, params.tpm, seeds[1], after.tokens, tl)):
                    want = bucket.seed(state, v, limit, float(now), params.burst_s)
                    if state is not None:
                        assert got == state  # a live bucket is never touched
                    assert close(bucket.level_at(want, limit, float(now), params.burst_s),
                                 bucket.level_at(got, limit, float(now), params.burst_s))
                    assert (reply == b"") == (limit <= 0)
                continue
            if roll < 0.25:  # the provider reports what remains
                rem = [rng.choice([None, rng.uniform(-1, 2 * cap_t)]) for _ in range(2)]
                _, _, now = await script(keys=keys.all(), args=[
                    "sync", str(params.rpm), str(params.tpm), repr(params.burst_s),
                    *("" if r is None else repr(r) for r in rem)])
                after = await read_state(client, keys)
                for state, limit, r, got in ((before.requests, params.rpm, rem[0],
                                              after.requests),
                                             (before.tokens, params.tpm, rem[1], after.tokens)):
                    want = bucket.correct(state, r, limit, float(now), params.burst_s)
                    assert close(bucket.level_at(want, limit, float(now), params.burst_s),
                                 bucket.level_at(got, limit, float(now), params.burst_s))
                continue
            req = Request(tenant, rng.choice([0, 1, rng.randint(1, int(2 * cap_t))]),
                          share.weight, share.bounded_min_share,
                          rng.choice([1.0, 3.0, 18.0]), rng.random())
            reply = await script(keys=keys.all(), args=acquire_args(params, req))
            granted, wait_ms, rl, tl, reason, now, w_eff, vt = reply
            ours, expected_state = admit(before, req, params, float(now))
            assert (bool(granted), reason.decode()) == (ours.granted, ours.reason)
            assert close(float(wait_ms) / 1000, ours.wait_s)
            assert close(float(rl) if rl else None, ours.requests_level)
            assert close(float(tl) if tl else None, ours.tokens_level)
            assert close(float(w_eff), ours.w_eff) and close(float(vt), ours.vt)
            assert_same_state(expected_state, await read_state(client, keys))

    run(main)


def test_lua_pause_is_honoured_and_never_shortened(names: Names) -> None:
    keys = PoolKeys.of(names, "pool")
    params = PoolParams(rpm=600, tpm=0, fair=FairParams(window=100.0))

    async def main(client: Redis) -> None:
        script = client.register_script(LIMITER_LUA)
        assert int(await script(keys=keys.all(), args=["pause", "5000"])) == 5000
        assert int(await script(keys=keys.all(), args=["pause", "100"])) > 4000
        reply = await script(keys=keys.all(), args=acquire_args(params, Request("a", 1)))
        assert reply[0] == 0 and reply[4] == b"hold" and 4000 < float(reply[1]) <= 5000
        assert not await client.exists(keys.requests)  # nothing was taken

    run(main)


# -- SharedLimiter against the real Redis ----------------------------------------------------

def _draw(url: str, ns: str, limits: PoolLimits, seconds: float, barrier: Any,
          results: Any) -> None:
    """Draw from one pool as fast as it allows, in a process of its own; report stamps."""
    async def main() -> None:
        client = Redis.from_url(url)
        limiter = SharedLimiter(client, Names(ns), {"p": limits})
        barrier.wait(timeout=60)
        start = time.time()
        stamps: list[float] = []

        async def caller() -> None:
            while time.time() < start + seconds:
                await limiter.acquire("p", "t", 1)
                stamps.append(time.time())

        await asyncio.gather(*(caller() for _ in range(8)))
        results.put((start, stamps))
        await client.aclose()

    asyncio.run(main())


def test_two_processes_share_one_pool(names: Names) -> None:
    limits = PoolLimits(rpm=1200, tpm=0, burst_s=1.0)  # 20 per second, bursts of 20
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=_draw, args=(REDIS_URL, names.ns, limits, 3.0, barrier,
                                             results)) for _ in range(2)]
    for proc in procs:
        proc.start()
    try:
        barrier.wait(timeout=60)
        reports = [results.get(timeout=60) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    start = min(r[0] for r in reports)
    stamps = [s for r in reports for s in r[1]]
    span = max(stamps) - start
    # Every grant was decided within [start, last stamp]: a bucket of 20 allows at most this.
    assert len(stamps) <= 20 + 20 * span + 1
    assert all(len(r[1]) >= 5 for r in reports)  # both processes drew from it
    assert len(stamps) >= 0.5 * 20 * 3.0  # and together they used it


def test_a_pause_on_429_makes_every_limiter_wait(names: Names) -> None:
    pools = {"p": PoolLimits(rpm=60_000, tpm=0)}

    async def main(client: Redis) -> None:
        refused, other = SharedLimiter(client, names, pools), SharedLimiter(client, names, pools)
        assert (await other.acquire("p", "t", 1)).attempts == 1
        held = await refused.rate_limited("p", {"retry-after-ms": "800",
                                                "x-ratelimit-remaining-requests": "0"})
        assert held == pytest.approx(0.8)
        grant = await other.acquire("p", "t", 1)
        assert grant.waited_s >= 0.7 and grant.attempts >= 2
        assert refused.stats()["rate_limited"] == 1 and refused.stats()["holds"] == 1

    run(main)


def test_true_up_credits_back_and_debits(names: Names) -> None:
    pools = {"p": PoolLimits(rpm=0, tpm=6_000, burst_s=60.0)}  # 6,000 tokens, 100 a second
    tokens_key = PoolKeys.of(names, "p").tokens

    async def main(client: Redis) -> None:
        limiter = SharedLimiter(client, names, pools)
        grant = await limiter.acquire("p", "t", 5_000)
        await limiter.true_up(grant, 1_000)  # 4,000 back
        grant = await limiter.acquire("p", "t", 4_500)
        assert grant.attempts == 1  # without the credit this would wait about 35 s
        await limiter.true_up(grant, 9_000)  # 4,500 more
        assert float(cast(bytes, await client.hget(tokens_key, "level"))) < -3_000

    run(main)


def test_provider_remaining_corrects_drift(names: Names) -> None:
    pools = {"p": PoolLimits(rpm=600, tpm=0)}  # a full bucket of 600 requests

    async def main(client: Redis) -> None:
        limiter = SharedLimiter(client, names, pools)
        await limiter.observe_headers("p", {"x-ratelimit-remaining-requests": "10000"})
        assert (await limiter.acquire("p", "t", 1)).attempts == 1  # more remaining: no change
        await limiter.observe_headers("p", {"x-ratelimit-remaining-requests": "0"})
        grant = await limiter.acquire("p", "t", 1)
        assert grant.attempts >= 2 and grant.waited_s >= 0.05  # 1 request refills in 0.1 s
        with pytest.raises(UnknownPool):
            await limiter.acquire("nope", "t", 1)

    run(main)


def test_light_tenant_gets_its_share_next_to_a_flood(names: Names) -> None:
    pools = {"p": PoolLimits(rpm=0, tpm=360_000, burst_s=0.5)}  # 6,000 tokens per second
    options = LimiterOptions(fair_window_s=0.2, min_window_tokens=0, grace_s=1.0)
    # Long enough that who takes the first burst (3,000 tokens) and who leads at the end
    # (by up to a window plus a request) moves the shares by under 5 %.
    seconds = 10.0

    async def main(client: Redis) -> None:
        workers = [SharedLimiter(client, names, pools, options=options) for _ in range(2)]
        tokens: dict[str, int] = defaultdict(int)

        async def caller(limiter: SharedLimiter, tenant: str, cost: int) -> None:
            while True:
                grant = await limiter.acquire("p", tenant, cost)
                tokens[tenant] += grant.tokens

        # Both backlogged from the start (the light one asks first, else the flood alone
        # rightly takes the initial burst), and stopped at once, so that only the time when
        # both were backlogged is measured.
        callers = [asyncio.create_task(caller(w, tenant, cost)) for w in workers
                   for tenant, cost, n in (("light", 1_500, 1), ("flood", 500, 12))
                   for _ in range(n)]
        await asyncio.sleep(seconds)
        for task in callers:
            task.cancel()
        await asyncio.gather(*callers, return_exceptions=True)
        total = tokens["flood"] + tokens["light"]
        assert total <= 3_000 + 6_000 * (seconds + 1)  # the pool's TPM held throughout
        assert tokens["light"] / total >= 0.9 * 0.5, dict(tokens)

    run(main)


async def _until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def test_redis_outage_falls_back_to_a_local_slice_and_recovers(names: Names) -> None:
    port = free_port()
    procs = [start_redis(port)]
    pools = {"p": PoolLimits(rpm=1_200, tpm=0, burst_s=1.0)}  # 20 per second when shared
    options = LimiterOptions(heartbeat_interval_s=0.2, probe_interval_s=0.2,
                             redis_timeout_s=0.5)

    async def main(client: Redis) -> None:
        now_ms = int(await redis_now(client) * 1000)
        await client.zadd(workers_key(names), {"another-worker": now_ms + 120_000})
        async with SharedLimiter(client, names, pools, options=options) as limiter:
            assert limiter.workers == 2
            assert (await limiter.acquire("p", "t", 1)).mode == "shared"

            procs[0].kill()
            procs[0].wait()
            modes: list[str] = []
            started = time.monotonic()

            async def caller() -> None:
                while time.monotonic() < started + 2.0:
                    modes.append((await limiter.acquire("p", "t", 1)).mode)

            await asyncio.gather(*(caller() for _ in range(4)))
            elapsed = time.monotonic() - started
            assert limiter.fallback and limiter.stats()["fallback_events"] == 1
            assert set(modes) == {"local"}
            # Half the pool (2 live workers), from an empty bucket: 10 per second.
            assert 3 <= len(modes) <= 10 * elapsed + 2

            procs.append(start_redis(port))

            async def shared_again() -> bool:
                return (await limiter.acquire("p", "t", 1)).mode == "shared"

            await _until(shared_again, 15.0, "the limiter to use Redis again")
            assert not limiter.fallback

    try:
        run(main, url=f"redis://127.0.0.1:{port}/0")
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


async def _level(client: Redis, key: str, limit: float, burst_s: float) -> float:
    """Return a bucket's level now, as the script would read it."""
    raw: dict[bytes, bytes] = cast(Any, await client.hgetall(key))
    state = BucketState(float(raw[b"level"]), float(raw[b"ts"])) if raw else None
    return bucket.level_at(state, limit, await redis_now(client), burst_s)


def _own_redis() -> tuple[int, subprocess.Popen[bytes]]:
    port = free_port()
    return port, start_redis(port)


def test_a_slow_await_is_not_an_outage(names: Names) -> None:
    port, proc = _own_redis()
    pools = {"p": PoolLimits(rpm=600, tpm=0, burst_s=1.0)}  # a bucket of 10, 10 per second
    options = LimiterOptions(redis_timeout_s=0.1, heartbeat_interval_s=0.2,
                             probe_interval_s=0.2)
    busy = "local t = redis.call('TIME') local s = t[1] + t[2] / 1e6 " \
           "repeat t = redis.call('TIME') until t[1] + t[2] / 1e6 > s + tonumber(ARGV[1])"

    async def main(client: Redis) -> None:
        async with SharedLimiter(client, names, pools, options=options) as limiter:
            assert (await limiter.acquire("p", "t", 1)).mode == "shared"
            # Redis (not gone, just blocked for 2.5 timeouts) answers late once: the limiter
            # retries, pings Redis, finds it alive and stays on the shared pool.
            blocker = Redis(port=port)
            stall = asyncio.create_task(blocker.eval(busy, 0, "0.25"))
            await asyncio.sleep(0.03)
            grant = await limiter.acquire("p", "t", 1)
            await stall
            await blocker.aclose()
            await asyncio.sleep(0.5)  # heartbeats and the confirming pings are done
            stats = limiter.stats()
            assert stats["redis_timeouts"] >= 1, stats
            assert grant.mode == "shared" and grant.attempts >= 2
            assert not limiter.fallback and stats["fallback_events"] == 0, stats
            # Nothing lowered the shared bucket to an (empty) local slice: it refilled.
            keys = PoolKeys.of(names, "p")
            assert await _level(client, keys.requests, 600, 1.0) >= 5

    try:
        run(main, url=f"redis://127.0.0.1:{port}/0")
    finally:
        proc.kill()
        proc.wait()


def test_recovering_from_an_unresponsive_redis_keeps_its_live_buckets(names: Names) -> None:
    port, proc = _own_redis()
    pools = {"p": PoolLimits(rpm=600, tpm=0, burst_s=1.0)}
    options = LimiterOptions(redis_timeout_s=0.1, heartbeat_interval_s=0.1,
                             probe_interval_s=0.1)

    async def main(client: Redis) -> None:
        keys = PoolKeys.of(names, "p")
        async with SharedLimiter(client, names, pools, options=options) as limiter:
            await limiter.acquire("p", "t", 1)
            admin = Redis(port=port)
            # Unresponsive for longer than the confirming pings, but it keeps its data.
            await admin.execute_command("CLIENT", "PAUSE", "1000", "ALL")
            await _until(lambda: _true(limiter.fallback), 5.0, "the local fallback")
            assert limiter.stats()["fallback_events"] == 1
            # Meanwhile the worker draws its local slice dry, until it shares the pool again.
            modes = [(await limiter.acquire("p", "t", 1)).mode]
            while modes[-1] == "local" and len(modes) < 500:
                modes.append((await limiter.acquire("p", "t", 1)).mode)
            assert len(modes) >= 3 and not limiter.fallback
            # The same Redis (run id) kept the pool's buckets: they are live and were not
            # lowered to the local slice's empty level on the way back.
            assert await _level(client, keys.requests, 600, 1.0) >= 8
            await admin.aclose()

    try:
        run(main, url=f"redis://127.0.0.1:{port}/0")
    finally:
        proc.kill()
        proc.wait()


async def _true(value: bool) -> bool:
    return value


def test_callers_of_one_tenant_take_turns_at_redis(names: Names) -> None:
    pools = {"p": PoolLimits(rpm=1_200, tpm=0, burst_s=0.5)}  # a bucket of 10, 20 per second

    async def main(client: Redis) -> None:
        limiter = SharedLimiter(client, names, pools)
        order: list[int] = []

        async def caller(i: int) -> None:
            await limiter.acquire("p", "t", 1)
            order.append(i)

        await asyncio.gather(*(caller(i) for i in range(40)))
        stats = limiter.stats()
        assert stats["grants"] == 40
        assert order == list(range(40))  # served in the order they asked
        # 30 waited for capacity; only the head of the queue asks Redis, about once per grant
        # (each caller polling on its own asked ~15 times per grant here).
        assert stats["denials"] <= 2 * 30, stats

    run(main)


def test_a_tenant_over_its_share_waits_and_takes_nothing_meanwhile(names: Names) -> None:
    pools = {"p": PoolLimits(rpm=0, tpm=60_000, burst_s=60.0)}  # 60,000 tokens, 1,000 a second
    options = LimiterOptions(fair_window_s=0.0, min_window_tokens=1_000, grace_s=10.0)
    keys = PoolKeys.of(names, "p")

    async def main(client: Redis) -> None:
        limiter = SharedLimiter(client, names, pools, options=options)
        await limiter.acquire("p", "light", 500)  # the light tenant is backlogged...
        for _ in range(3):  # ...and the flood gets a window (1,000) and a call ahead of it
            await limiter.acquire("p", "flood", 500)
        level = await _level(client, keys.tokens, 60_000, 60.0)
        vt = float(cast(bytes, await client.hget(keys.vt, "flood")))
        flood = asyncio.create_task(limiter.acquire("p", "flood", 500))
        await asyncio.sleep(0.2)
        assert not flood.done()  # told to wait for its fair share (1 s, the cap)
        # Nothing was taken: the bucket only refilled, the flood's virtual time did not move.
        assert await _level(client, keys.tokens, 60_000, 60.0) >= level
        assert float(cast(bytes, await client.hget(keys.vt, "flood"))) == vt
        # The light tenant, which is behind, is granted at once meanwhile...
        assert (await limiter.acquire("p", "light", 500)).attempts == 1
        # ...and the flood, level again within the window, once its wait is over.
        grant = await flood
        assert grant.attempts >= 2 and grant.waited_s >= 0.9
        assert limiter.stats()["denials"] >= 1

    run(main)
