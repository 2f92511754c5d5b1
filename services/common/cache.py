"""The exact-match answer cache in Redis, shared by the router (reads) and workers (writes)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel
from redis.asyncio import Redis

from services.common.models import Task, Usage
from services.common.topology import Names


class CachedAnswer(BaseModel):
    output: str
    model: str
    tier: str
    usage: Usage
    task_id: str = ""  # the task whose call produced the answer


def cacheable(task: Task) -> bool:
    """Return whether a task's answer may be served from, and stored in, the cache."""
    if task.cache == "off":
        return False
    return task.cache == "on" or task.temperature == 0


def normalise(text: str) -> str:
    return " ".join(text.split()).lower()


def cache_key(names: Names, task: Task, tier: str) -> str:
    """Key an answer by tenant, tier, normalised messages and the parameters that change it."""
    material: dict[str, Any] = {
        "messages": [[m.role, normalise(m.content)] for m in task.messages],
        "tier": tier, "kind": task.kind, "max_tokens": task.max_tokens,
        "temperature": task.temperature,
    }
    digest = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
    return names.redis_key("cache", "exact", task.tenant, digest)


class ExactCache:
    """Read and write cached answers with a TTL."""

    def __init__(self, redis: Redis, names: Names, ttl_s: int) -> None:
        self._redis = redis
        self._names = names
        self._ttl_s = ttl_s

    async def get(self, task: Task, tier: str) -> CachedAnswer | None:
        raw = await self._redis.get(cache_key(self._names, task, tier))
        return CachedAnswer.model_validate_json(raw) if raw else None

    async def put(self, task: Task, tier: str, answer: CachedAnswer) -> None:
        await self._redis.set(cache_key(self._names, task, tier), answer.model_dump_json(),
                              ex=self._ttl_s)
