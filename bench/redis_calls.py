"""Redis commands run during a measured window, from `INFO commandstats` before and after.

The counts are the whole server's: anything else using the same Redis meanwhile adds to
them (the benchmarks say so where they print them).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis


def calls_by_command(info: Mapping[str, Any]) -> dict[str, int]:
    """Return {command: calls} from redis-py's parsed `INFO commandstats`."""
    return {key.removeprefix("cmdstat_"): int(value["calls"]) for key, value in info.items()
            if key.startswith("cmdstat_") and isinstance(value, Mapping) and "calls" in value}


def delta(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    """Return the calls of each command between two readings (new commands from 0)."""
    out = {name: calls - before.get(name, 0) for name, calls in after.items()}
    return {name: calls for name, calls in out.items() if calls > 0}


def summary(calls: Mapping[str, int], tasks: int, top: int = 8) -> str:
    """Return one line: commands per task in all, and the most used ones."""
    if not tasks:
        return "no tasks"
    ranked = sorted(calls.items(), key=lambda item: -item[1])[:top]
    parts = ", ".join(f"{name} {count / tasks:.1f}" for name, count in ranked)
    return f"{sum(calls.values()) / tasks:.1f} per task ({parts})"


class RedisCalls:
    """Count the commands a Redis server ran between `start()` and `stop()`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.before: dict[str, int] = {}

    def _read(self) -> dict[str, int]:
        client = redis.Redis.from_url(self.url)
        try:
            return calls_by_command(client.info("commandstats"))
        finally:
            client.close()

    def start(self) -> None:
        self.before = self._read()

    def stop(self) -> dict[str, int]:
        calls = delta(self.before, self._read())
        for own in ("hello", "info"):  # this reading's own connection handshake and INFO
            if calls.get(own):
                calls[own] -= 1
        return {name: count for name, count in calls.items() if count > 0}
