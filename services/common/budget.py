"""Per-tenant spend: daily and monthly counters in Redis, and the soft/hard limit decision."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Literal

from redis.asyncio import Redis

from services.common.cost_config import BudgetConfig
from services.common.topology import Names

BudgetLevel = Literal["ok", "soft", "hard"]
NANO = 1_000_000_000  # spend is counted in nano-dollars: integers add up exactly
DAY_KEY_TTL_S = 3 * 86_400
MONTH_KEY_TTL_S = 35 * 86_400


# KEYS: the batch's mark, then the counters; ARGV: the mark's ttl (ms), then per counter its
# amount and ttl (s). Adds a batch of spend unless its mark says it was added already.
_ADD_ONCE = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
  return 0
end
for i = 2, #KEYS do
  redis.call('INCRBY', KEYS[i], ARGV[2 * i - 2])
  redis.call('EXPIRE', KEYS[i], ARGV[2 * i - 1])
end
return 1
"""
ADDED_MARK_MS = 3_600_000  # a batch sent again within the hour is not counted twice


@dataclass(frozen=True)
class Spend:
    day_usd: float = 0.0
    month_usd: float = 0.0


def _over(spent: float, limit: float | None) -> bool:
    return limit is not None and spent >= limit


def budget_level(spend: Spend, budget: BudgetConfig | None) -> BudgetLevel:
    """Say whether a tenant is within budget, past a soft limit, or at a hard one."""
    if budget is None:
        return "ok"
    if _over(spend.day_usd, budget.daily_hard_usd) or _over(spend.month_usd,
                                                             budget.monthly_hard_usd):
        return "hard"
    if _over(spend.day_usd, budget.daily_soft_usd) or _over(spend.month_usd,
                                                             budget.monthly_soft_usd):
        return "soft"
    return "ok"


def period_keys(names: Names, tenant: str, now: float) -> tuple[str, str]:
    """Return the Redis keys of a tenant's spend today and this month (UTC)."""
    day = time.strftime("%Y-%m-%d", time.gmtime(now))
    return (names.redis_key("budget", tenant, "day", day),
            names.redis_key("budget", tenant, "month", day[:7]))


class SpendLedger:
    """Add each call's real cost to its tenant's counters, and read them back."""

    def __init__(self, redis: Redis, names: Names) -> None:
        self._redis = redis
        self._names = names
        self._add = redis.register_script(_ADD_ONCE)
        # Spend Redis did not take (an outage), in batches that are each added once: an
        # outage delays the count but loses none of it (unless the process stops first), and
        # a batch whose reply was lost is not counted twice when sent again.
        self._unflushed: deque[tuple[str, dict[tuple[str, int], int]]] = deque()
        self._flushing = asyncio.Lock()  # one flush at a time sends each batch once, in order

    async def add(self, tenant: str, cost_usd: float, now: float | None = None) -> None:
        """Count `cost_usd` against the tenant's day and month; on a Redis error keep it for
        the next add and raise."""
        nano = round(cost_usd * NANO)
        if nano <= 0:
            return
        day, month = period_keys(self._names, tenant, time.time() if now is None else now)
        self._unflushed.append((uuid.uuid4().hex, {(day, DAY_KEY_TTL_S): nano,
                                                   (month, MONTH_KEY_TTL_S): nano}))
        async with self._flushing:  # a concurrent add's flush may have sent this one already
            while self._unflushed:
                batch_id, amounts = self._unflushed[0]
                keys = [self._names.redis_key("budget", "added", batch_id),
                        *(key for key, _ in amounts)]
                args = [ADDED_MARK_MS, *(x for (_, ttl), n in amounts.items() for x in (n, ttl))]
                await self._add(keys=keys, args=args)
                self._unflushed.popleft()

    async def spend(self, tenant: str, now: float | None = None) -> Spend:
        day, month = period_keys(self._names, tenant, time.time() if now is None else now)
        day_nano, month_nano = await self._redis.mget(day, month)
        return Spend(int(day_nano or 0) / NANO, int(month_nano or 0) / NANO)

    async def level(self, tenant: str, budget: BudgetConfig | None) -> BudgetLevel:
        """Return the tenant's budget level; a tenant without a budget is always ok."""
        if budget is None:
            return "ok"
        return budget_level(await self.spend(tenant), budget)
