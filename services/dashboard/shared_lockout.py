"""The login lockout kept in Redis, so every gunicorn worker counts the same failures.

A thin adapter over `login_lockout.wait_s`: each client's failure times are a sorted set under
`<namespace>:dashboard:login_failures:<client>`. While Redis is unreachable the dashboard
still serves: the in-process lockout takes over, and Redis is tried again after a pause.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis

from services.common.clients import sync_redis_client
from services.dashboard.login_lockout import DEFAULT_POLICY, LockoutPolicy, LoginLockout, wait_s

log = logging.getLogger(__name__)
# After a failure Redis is asked again only this much later: one login per pause may wait
# out the timeout policy on a stalled Redis, never each one.
RETRY_REDIS_S = 30.0


class SharedLockout:
    """Failed logins per client in Redis, with an in-process fallback."""

    def __init__(self, client: redis.Redis, prefix: str,
                 policy: LockoutPolicy = DEFAULT_POLICY,
                 clock: Callable[[], float] = time.time) -> None:
        self.policy = policy
        self._client = client
        self._prefix = prefix
        self._clock = clock
        self._fallback = LoginLockout(policy)
        self._down_until = 0.0

    @classmethod
    def from_url(cls, url: str, namespace: str,
                 policy: LockoutPolicy = DEFAULT_POLICY) -> SharedLockout:
        """Build one on a Redis client of the one timeout policy (it connects on first use)."""
        return cls(sync_redis_client(url), f"{namespace}:dashboard:login_failures:", policy)

    def _key(self, key: str) -> str:
        return self._prefix + key

    def _redis_up(self) -> bool:
        return time.monotonic() >= self._down_until

    def _redis_failed(self, exc: Exception) -> None:
        if self._redis_up():
            log.warning("Redis unreachable for the login lockout (%s); counting failed "
                        "logins in this process for %.0f s", exc, RETRY_REDIS_S)
        self._down_until = time.monotonic() + RETRY_REDIS_S

    def retry_after(self, key: str) -> float:
        """Return the seconds `key` must wait before its next attempt (0 = go ahead)."""
        if self._redis_up():
            now = self._clock()
            try:
                found: Any = self._client.zrangebyscore(self._key(key), now - self.policy.window_s,
                                                   "+inf", withscores=True)
                return max(wait_s((score for _, score in found), now, self.policy),
                           self._fallback.retry_after(key))
            except (redis.RedisError, OSError) as exc:
                self._redis_failed(exc)
        return self._fallback.retry_after(key)

    def failed(self, key: str) -> None:
        """Count a failed attempt of `key`."""
        if self._redis_up():
            now = self._clock()
            name = self._key(key)
            try:
                pipe = self._client.pipeline()
                pipe.zadd(name, {f"{now:.6f}-{uuid.uuid4().hex[:8]}": now})
                pipe.zremrangebyscore(name, "-inf", now - self.policy.window_s)
                pipe.zremrangebyrank(name, 0, -self.policy.max_failures - 1)
                pipe.expire(name, int(self.policy.window_s) + 1)
                pipe.execute()
                return
            except (redis.RedisError, OSError) as exc:
                self._redis_failed(exc)
        self._fallback.failed(key)

    def succeeded(self, key: str) -> None:
        """Forget `key`'s failures: the right password was given."""
        self._fallback.succeeded(key)
        if self._redis_up():
            try:
                self._client.delete(self._key(key))
            except (redis.RedisError, OSError) as exc:
                self._redis_failed(exc)
