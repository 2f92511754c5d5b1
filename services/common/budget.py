"""Per-tenant spend: daily and monthly counters in Redis, and the soft/hard limit decision."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass
from typing import Literal

from redis.asyncio import Redis

from services.common.cost_config import BudgetConfig
from services.common.topology import Names

BudgetLevel = Literal["ok", "soft", "hard"]
NANO = 1_000_000_000  # spend is counted in nano-dollars: integers add up exactly
DAY_KEY_TTL_S = 3 * 86_400
MONTH_KEY_TTL_S = 35 * 86_400


# KEYS: the writer's high-water mark, then the counters. ARGV: the batch's number, the mark's
# ttl (ms), then per counter its amount and ttl (s). A writer sends its batches in order, so
# one numbered at or below its mark was added already (only its reply was lost): skipped.
_ADD_ONCE = """
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) <= last then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
for i = 2, #KEYS do
  redis.call('INCRBY', KEYS[i], ARGV[2 * i - 1])
  redis.call('EXPIRE', KEYS[i], ARGV[2 * i])
end
return 1
"""
WRITER_MARK_MS = 86_400_000  # a batch sent again within a day is not counted twice


@dataclass
class _Batch:
    number: int
    amounts: Counter[tuple[str, int]]  # (counter key, its ttl in s) -> nano-dollars
    sent: bool = False  # once sent it is never added to: a resend must be the same batch


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
        # Spend Redis did not take yet (an outage, a flush under way), in numbered batches
        # sent in order: an outage delays the count but loses none of it (unless the process
        # stops first), and a batch whose reply was lost is not counted twice when resent.
        self._mark = names.redis_key("budget", "writer", uuid.uuid4().hex)
        self._numbers = itertools.count(1)
        self._unflushed: deque[_Batch] = deque()
        self._flushing = asyncio.Lock()

    async def add(self, tenant: str, cost_usd: float, now: float | None = None) -> None:
        """Count `cost_usd` against the tenant's day and month. On a Redis error it is kept
        for the next add and the error raised; while another add's flush is under way, that
        flush sends it."""
        nano = round(cost_usd * NANO)
        if nano <= 0:
            return
        day, month = period_keys(self._names, tenant, time.time() if now is None else now)
        amounts = {(day, DAY_KEY_TTL_S): nano, (month, MONTH_KEY_TTL_S): nano}
        if self._unflushed and not self._unflushed[-1].sent:
            self._unflushed[-1].amounts.update(amounts)  # one batch however long an outage
        else:
            self._unflushed.append(_Batch(next(self._numbers), Counter(amounts)))
        if self._flushing.locked():
            return  # a hung Redis must not queue every finishing task up behind it
        async with self._flushing:
            while self._unflushed:
                batch = self._unflushed[0]
                batch.sent = True
                keys = [self._mark, *(key for key, _ in batch.amounts)]
                args = [batch.number, WRITER_MARK_MS,
                        *(x for (_, ttl), n in batch.amounts.items() for x in (n, ttl))]
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
