"""Per-tenant spend: daily and monthly counters in Redis, and the soft/hard limit decision."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Literal

from redis.asyncio import Redis

from services.common.cost_config import BudgetConfig
from services.common.topology import Names

BudgetLevel = Literal["ok", "soft", "hard"]
NANO = 1_000_000_000  # spend is counted in nano-dollars: integers add up exactly
DAY_KEY_TTL_S = 3 * 86_400
MONTH_KEY_TTL_S = 35 * 86_400


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
        # Spend Redis did not take (an outage), per counter key, in nano-dollars: added with
        # the next spend that goes through, so an outage delays the count but loses none of
        # it (unless the process stops first).
        self._unrecorded: Counter[tuple[str, int]] = Counter()  # (key, ttl_s) -> nano

    async def add(self, tenant: str, cost_usd: float, now: float | None = None) -> None:
        """Count `cost_usd` against the tenant's day and month; on a Redis error keep it for
        the next add and raise."""
        nano = round(cost_usd * NANO)
        if nano <= 0:
            return
        day, month = period_keys(self._names, tenant, time.time() if now is None else now)
        pending, self._unrecorded = self._unrecorded, Counter()
        pending.update({(day, DAY_KEY_TTL_S): nano, (month, MONTH_KEY_TTL_S): nano})
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for (key, ttl_s), amount in pending.items():
                    pipe.incrby(key, amount).expire(key, ttl_s)
                await pipe.execute()
        except BaseException:
            self._unrecorded.update(pending)
            raise

    async def spend(self, tenant: str, now: float | None = None) -> Spend:
        day, month = period_keys(self._names, tenant, time.time() if now is None else now)
        day_nano, month_nano = await self._redis.mget(day, month)
        return Spend(int(day_nano or 0) / NANO, int(month_nano or 0) / NANO)

    async def level(self, tenant: str, budget: BudgetConfig | None) -> BudgetLevel:
        """Return the tenant's budget level; a tenant without a budget is always ok."""
        if budget is None:
            return "ok"
        return budget_level(await self.spend(tenant), budget)
