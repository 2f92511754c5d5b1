"""The login lockout: at most N failed logins per client in a sliding window, then wait.

Pure and in-process: no Flask, no I/O; the clock is injected so tests can move time.
`shared_lockout.py` keeps the same failures in Redis so every gunicorn worker agrees.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class LockoutPolicy:
    """How many failed logins a client may make within `window_s` before it must wait."""

    max_failures: int = 10
    window_s: float = 15 * 60.0


DEFAULT_POLICY = LockoutPolicy()


def wait_s(failures: Iterable[float], now: float, policy: LockoutPolicy) -> float:
    """Return the seconds until another attempt is allowed (0 = now), given failure times."""
    recent = sorted(t for t in failures if t > now - policy.window_s)
    if len(recent) < policy.max_failures:
        return 0.0
    # Allowed again once enough of the oldest failures have left the window.
    return max(0.0, recent[-policy.max_failures] + policy.window_s - now)


class Lockout(Protocol):
    """What the login view needs: ask before checking a password, report the outcome."""

    def retry_after(self, key: str) -> float: ...

    def failed(self, key: str) -> None: ...

    def succeeded(self, key: str) -> None: ...


class LoginLockout:
    """Failed logins per client key, kept in this process (one gunicorn worker)."""

    def __init__(self, policy: LockoutPolicy = DEFAULT_POLICY,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 10_000) -> None:
        self.policy = policy
        self._clock = clock
        self._max_keys = max_keys
        self._failures: OrderedDict[str, list[float]] = OrderedDict()
        self._lock = threading.Lock()  # gunicorn threads share one worker's lockout

    def retry_after(self, key: str) -> float:
        """Return the seconds `key` must wait before its next attempt (0 = go ahead)."""
        with self._lock:
            return wait_s(self._failures.get(key, ()), self._clock(), self.policy)

    def failed(self, key: str) -> None:
        """Count a failed attempt of `key`."""
        now = self._clock()
        with self._lock:
            kept = [t for t in self._failures.pop(key, []) if t > now - self.policy.window_s]
            self._failures[key] = [*kept, now][-self.policy.max_failures:]
            while len(self._failures) > self._max_keys:  # a flood of addresses: forget the oldest
                self._failures.popitem(last=False)

    def succeeded(self, key: str) -> None:
        """Forget `key`'s failures: the right password was given."""
        with self._lock:
            self._failures.pop(key, None)
