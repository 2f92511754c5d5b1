"""In-flight dedup: of identical cacheable tasks running at once, one calls the provider.

The first worker to take a task sets a lock on its exact-cache key (SET NX, owned by the task,
with a TTL). A twin that finds the lock taken waits for the cache entry to appear; when
the lock goes away without an answer (the owner failed) or the wait times out, the twin calls
the provider itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

from services.common.cache import CachedAnswer
from services.common.models import Task

POLL_S = 0.05

# Delete the lock only if this task still owns it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def lock_key(cache_key: str) -> str:
    return f"{cache_key}:inflight"


def owner_of(task: Task) -> str:
    """Name a lock's owner by tenant and id: ids are per tenant. (The cache key, and so the
    lock, is per tenant too: one tenant's task never waits on another's paid call.)"""
    return f"{task.tenant}/{task.id}"


class InflightLocks:
    """Own the right to call the provider for one cache key at a time."""

    def __init__(self, redis: Redis, ttl_s: float) -> None:
        self._redis = redis
        self._ttl_ms = int(ttl_s * 1000)
        self._release = redis.register_script(_RELEASE)

    async def acquire(self, cache_key: str, owner: str) -> bool:
        """Take the lock, or renew it when `owner` already holds it (a retry of the owner)."""
        key = lock_key(cache_key)
        if await self._redis.set(key, owner, nx=True, px=self._ttl_ms):
            return True
        current = await self._redis.get(key)
        if current is not None and _text(current) == owner:
            await self._redis.pexpire(key, self._ttl_ms)
            return True
        return False

    async def release(self, cache_key: str, owner: str) -> None:
        await self._release(keys=[lock_key(cache_key)], args=[owner])

    async def held(self, cache_key: str) -> bool:
        return bool(await self._redis.exists(lock_key(cache_key)))


async def wait_for_answer(fetch: Callable[[], Awaitable[CachedAnswer | None]],
                          locked: Callable[[], Awaitable[bool]],
                          timeout_s: float) -> CachedAnswer | None:
    """Poll until the answer lands; None once the lock is gone without one, or on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        answer = await fetch()
        if answer is not None:
            return answer
        if not await locked():
            return await fetch()  # the owner may have written it just before letting go
        await asyncio.sleep(POLL_S)
    return None
