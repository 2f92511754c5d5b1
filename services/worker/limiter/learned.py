"""Keep each provider pool's limits in force as they are learned, shared by every worker.

The tier table's limits when given; the provider's `x-ratelimit-limit-*` headers as soon as an
answer carries them (the lower one wins over a configured limit, with a warning); else no
limit until the provider answers 429, and from then the adaptive rule of `learning.py`. What a
worker learns goes to the Redis hash `<namespace>:limiter:{<pool>}:learned`, which every
worker reads every second.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from functools import partial
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import WatchError

from services.common.redis_extras import REDIS_DOWN
from services.common.topology import Names
from services.worker.limiter import metrics
from services.worker.limiter.headers import limits_from_headers
from services.worker.limiter.learning import (
    Adaptive,
    AdaptiveParams,
    Advertised,
    Lowered,
    Source,
    adaptive_limits,
    combine,
    decrease,
    effective,
    increase,
    known,
    observed_rpm,
    rule_start,
)
from services.worker.limiter.limiter import SharedLimiter
from services.worker.limiter.pools import PoolLimits

log = logging.getLogger(__name__)
STATE_TTL_MS = 7 * 24 * 3600 * 1000  # a pool unused for a week learns again
OnLowered = Callable[[str, Lowered], Awaitable[None]]


def learned_key(names: Names, pool: str) -> str:
    return names.redis_key("limiter", "{" + pool + "}", "learned")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _read(raw: Mapping[Any, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in raw.items():
        try:
            out[_text(key)] = float(_text(value))
        except ValueError:
            continue
    return out


def _advertised(fields: Mapping[str, float]) -> dict[str, Advertised]:
    """Return the limits each model's answers advertised, from the learned hash."""
    out: dict[str, Advertised] = {}
    for name, value in fields.items():
        kind, sep, model = name.partition(":")
        if sep and kind in ("advertised_rpm", "advertised_tpm"):
            rpm, tpm = out.get(model, (None, None))
            number = int(value) if value > 0 else None
            out[model] = (number, tpm) if kind == "advertised_rpm" else (rpm, number)
    return {model: limits for model, limits in out.items() if limits != (None, None)}


def _adaptive(fields: Mapping[str, float]) -> Adaptive:
    return Adaptive(fields["rpm"], fields.get("threshold", 0.0), fields.get("decreased_at", 0.0))


class LearnedLimits:
    """Learn and share the limits of the provider pools; the limiter runs on what is learned."""

    def __init__(self, redis: Redis, names: Names, limiter: SharedLimiter,
                 configured: Mapping[str, PoolLimits], pools: Iterable[str],
                 params: AdaptiveParams | None = None,
                 on_lowered: OnLowered | None = None) -> None:
        self._redis = redis
        self._names = names
        self._limiter = limiter
        self._params = params or AdaptiveParams()
        self._on_lowered = on_lowered
        self._configured = {pool: configured.get(pool, PoolLimits()) for pool in pools}
        self._advertised: dict[str, dict[str, Advertised]] = {}  # pool -> model -> limits
        self._adaptive: dict[str, Adaptive] = {}
        self._pending: Counter[str] = Counter()  # saturated successes not yet shared
        self._sources: dict[str, Source] = {}
        self._warned: set[tuple[str, Lowered]] = set()
        # Unlimited pools: when this worker's calls succeeded (the last minute's), and since.
        self._successes: dict[str, deque[float]] = {}
        self._first_at: dict[str, float] = {}
        for pool, limits in self._configured.items():
            if known(limits):
                self._put(pool, limits, "config")
            else:
                self._sources[pool] = "unlimited"

    def source(self, pool: str) -> Source | None:
        """Return where the pool's limits in force come from (None: not a learned pool)."""
        return self._sources.get(pool)

    def sources(self) -> dict[str, Source]:
        return dict(self._sources)

    # -- what the throttle reports --

    async def answered(self, pool: str, headers: Mapping[str, str], saturated: bool,
                       model: str = "") -> None:
        """Learn from a provider's answer; `saturated`: the call had waited for capacity."""
        if pool not in self._configured or await self._advertise(pool, model, headers):
            return
        if pool in self._adaptive:
            if saturated:
                self._pending[pool] += 1
        elif self._sources.get(pool) == "unlimited":
            now = time.time()
            times = self._successes.setdefault(pool, deque())
            self._first_at.setdefault(pool, now)
            times.append(now)
            while times and now - times[0] > 60.0:
                times.popleft()

    async def refused(self, pool: str, headers: Mapping[str, str], model: str = "") -> None:
        """Learn from a 429: its headers, else the adaptive rule's decrease."""
        if pool not in self._configured or await self._advertise(pool, model, headers):
            return
        now = time.time()
        if self._sources.get(pool) == "unlimited":
            # The first 429 of a pool that said nothing: the rule starts from the rate this
            # worker was getting (unless another worker started it already: see _update).
            observed = observed_rpm(self._successes.pop(pool, ()), self._first_at.pop(pool, now),
                                    now, self._limiter.workers, self._params)
            self._adaptive[pool] = rule_start(observed, self._params)
            log.warning("limiter: %s answered 429 and advertises no limits; pacing it by the "
                        "adaptive rule from %.1f RPM (decreased from here)", pool,
                        self._adaptive[pool].rpm)
        if pool in self._adaptive:
            before = self._adaptive[pool]
            after = await self._update(pool, lambda state: decrease(state, now, self._params))
            if after is not None and after.decreased_at != before.decreased_at:
                metrics.ADAPTIVE_DECREASES.labels(pool).inc()
                log.info("limiter: %s answered 429; adaptive limit %.1f -> %.1f RPM", pool,
                         before.rpm, after.rpm)

    # -- every second: share what this worker learned, take what the others did --

    async def poll(self) -> None:
        for pool in self._configured:
            try:
                fields = _read(await self._redis.hgetall(learned_key(self._names, pool)))
            except REDIS_DOWN as exc:
                log.debug("limiter: learned limits of %s not read: %s", pool, exc)
                continue
            advertised = _advertised(fields)
            if advertised:
                if advertised != self._advertised.get(pool):
                    self._advertised[pool] = advertised
                    await self._apply_advertised(pool)
                continue
            if self._sources.get(pool) not in ("adaptive", "unlimited"):
                continue
            if pool not in self._adaptive:  # unlimited here: adopt what another worker began
                if fields.get("rpm", 0) > 0:
                    self._successes.pop(pool, None)
                    self._adapt(pool, _adaptive(fields))
                continue
            successes = self._pending.pop(pool, 0)
            if successes == 0:  # nothing to add: take the others' state as it is
                if fields.get("rpm", 0) > 0:
                    self._adapt(pool, _adaptive(fields))
                continue
            if await self._update(pool, partial(increase, successes=successes,
                                                now=time.time(), params=self._params)) is None:
                self._pending[pool] += successes  # shared next time

    # -- internals --

    async def _advertise(self, pool: str, model: str, headers: Mapping[str, str]) -> bool:
        """Apply and share the limits an answer advertises; True if the pool runs on them."""
        advertised = limits_from_headers(headers)
        if advertised == (None, None):
            return self._sources.get(pool) == "headers" or pool in self._advertised
        known_here = self._advertised.setdefault(pool, {})
        if known_here.get(model) != advertised:
            known_here[model] = advertised
            await self._apply_advertised(pool)
            rpm, tpm = advertised
            try:
                key = learned_key(self._names, pool)
                await self._redis.hset(key, mapping={f"advertised_rpm:{model}": rpm or 0,
                                                     f"advertised_tpm:{model}": tpm or 0})
                await self._redis.pexpire(key, STATE_TTL_MS)
            except REDIS_DOWN as exc:  # the next answer tells us again
                log.debug("limiter: advertised limits of %s not shared: %s", pool, exc)
        return True

    async def _apply_advertised(self, pool: str) -> None:
        limits, source, lowered = effective(self._configured[pool],
                                            *combine(self._advertised[pool]))
        self._adaptive.pop(pool, None)
        self._pending.pop(pool, None)
        if not known(limits):
            return
        self._put(pool, limits, source)
        for change in lowered:
            if (pool, change) in self._warned:
                continue
            self._warned.add((pool, change))
            metrics.LOWERED.labels(pool, change.limit).inc()
            log.warning("limiter: provider %s advertises %s %d, lower than the %d configured; "
                        "using %d", pool, change.limit, change.advertised, change.configured,
                        change.advertised)
            if self._on_lowered is not None:
                try:
                    await self._on_lowered(pool, change)
                except Exception:  # telemetry must never stop a call
                    log.debug("limiter: lowered-limit event not sent", exc_info=True)

    async def _update(self, pool: str, rule: Callable[[Adaptive], Adaptive]) -> Adaptive | None:
        """Apply the adaptive rule to the shared state (compare-and-set); None if not shared."""
        key = learned_key(self._names, pool)
        for _ in range(3):
            try:
                async with self._redis.pipeline(transaction=True) as pipe:
                    await pipe.watch(key)
                    fields = _read(await pipe.hgetall(key))
                    if _advertised(fields):
                        return None  # another worker learned real limits: poll applies them
                    state = (_adaptive(fields) if fields.get("rpm", 0) > 0
                             else self._adaptive[pool])
                    new = rule(state)
                    pipe.multi()
                    pipe.hset(key, mapping={"rpm": repr(new.rpm),
                                            "threshold": repr(new.threshold),
                                            "decreased_at": repr(new.decreased_at)})
                    pipe.pexpire(key, STATE_TTL_MS)
                    await pipe.execute()
            except WatchError:
                continue
            except REDIS_DOWN as exc:
                log.debug("limiter: adaptive limit of %s kept locally: %s", pool, exc)
                new = rule(self._adaptive[pool])
                self._adapt(pool, new)
                return new
            self._adapt(pool, new)
            return new
        return None

    def _adapt(self, pool: str, state: Adaptive) -> None:
        self._adaptive[pool] = state
        self._put(pool, adaptive_limits(state, self._params), "adaptive")

    def _put(self, pool: str, limits: PoolLimits, source: Source) -> None:
        self._successes.pop(pool, None)
        self._sources[pool] = source
        self._limiter.set_limits(pool, limits)
        metrics.LIMIT.labels(pool, "rpm").set(limits.rpm)
        metrics.LIMIT.labels(pool, "tpm").set(limits.tpm)
