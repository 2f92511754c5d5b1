"""Decide whether and when to retry a failed call: pure functions."""

from __future__ import annotations

import random


def backoff_ms(attempt: int, base_ms: int, max_ms: int, rng: random.Random) -> float:
    """Return the wait before `attempt + 1`: exponential with equal jitter, capped."""
    ceiling = min(max_ms, base_ms * 2 ** max(0, attempt - 1))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


def retry_delay_ms(attempt: int, base_ms: int, max_ms: int, rng: random.Random,
                   provider_hint_s: float | None) -> float:
    """Return the retry delay: the provider's own hint when it gave one, else the backoff."""
    delay = backoff_ms(attempt, base_ms, max_ms, rng)
    if provider_hint_s is not None:
        delay = max(delay, provider_hint_s * 1000)
    return min(delay, max_ms)


def should_retry(retryable: bool, attempt: int, max_attempts: int) -> bool:
    return retryable and attempt < max_attempts


def next_attempt(rate_limited: bool, retryable: bool, attempt: int,
                 max_attempts: int) -> int | None:
    """Return the attempt number to retry a failed delivery as, or None to fail the task.

    Waiting for capacity (a 429 handed back to the queue) is no attempt: the same number
    goes again, however many times; the task's own errors spend one each.
    """
    if rate_limited and retryable:
        return attempt
    return attempt + 1 if should_retry(retryable, attempt, max_attempts) else None


def capacity_left_s(since: float | None, now: float, limit_s: float) -> float:
    """Return how much longer a task may wait for provider capacity.

    The budget runs from the task's first rate-limited wait (`since`, carried across retries);
    a task that has not waited yet has all of it. Waits never spend attempts.
    """
    if since is None:
        return limit_s
    return max(0.0, since + limit_s - now)
