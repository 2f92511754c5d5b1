"""Time the semantic cache at scale: one scope filled in Redis, loaded into a fresh index,
then full lookups and bare index searches timed (shared by `agentq bench cost` and
`agentq bench cache`, which differ only in what they fill and what they ask)."""

from __future__ import annotations

import gc
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from redis.asyncio import Redis

from services.common.embedder import Embedder
from services.common.models import Task
from services.common.pair_check import PairChecker
from services.common.semantic_cache import SemanticCache, scope_of
from services.common.semantic_index import SemanticIndex
from services.common.topology import Names

REDIS_URL = "redis://127.0.0.1:6379/0"


def quantile(seconds: list[float], q: int) -> float:
    """Return the q-th percentile of timings, in milliseconds."""
    ordered = sorted(seconds)
    return ordered[min(len(ordered) - 1, len(ordered) * q // 100)] * 1000


async def timed_lookups(embedder: Embedder, embed_now: Callable[[list[str]], Any],
                        fill: Callable[[SemanticCache], Awaitable[None]],
                        queries: Iterable[str], threshold: float,
                        checker: PairChecker | None = None) -> dict[str, float]:
    """Fill one scope through `fill(writer)`, load it into a fresh index from Redis, and
    time a full lookup (embed, search, entry fetch, guard) and a bare index search of each
    query; the run's Redis keys are deleted afterwards."""
    names = Names(f"agentq_bench_{uuid.uuid4().hex[:8]}")
    redis = Redis.from_url(REDIS_URL)
    try:
        await fill(SemanticCache(redis, names, embedder, ttl_s=3600))
        reader = SemanticCache(redis, names, embedder, ttl_s=3600,
                               index=SemanticIndex(embedder.dimensions), checker=checker)
        started = time.perf_counter()
        await reader.sync(force=True)
        load_s = time.perf_counter() - started
        gc.freeze()  # as the router does after loading: full collections skip start-up objects
        index = reader.index
        assert index is not None
        scope = scope_of(Task(tenant="bench", kind="classify", prompt="x"), "cheap")
        full, search, hits = [], [], 0
        for text in queries:
            task = Task(tenant="bench", kind="classify", prompt=text)
            started = time.perf_counter()
            hit = await reader.lookup(task, "cheap", threshold, now=time.time())
            full.append(time.perf_counter() - started)
            hits += hit is not None
            vector = embed_now([text])[0]
            started = time.perf_counter()
            index.search(scope, vector, time.time(), threshold)
            search.append(time.perf_counter() - started)
        return {"entries": float(len(index)), "load_s": load_s,
                "hit_share": hits / max(len(full), 1),
                **{f"{name}_{q}": quantile(values, q) for name, values in
                   (("full", full), ("index", search)) for q in (50, 99)}}
    finally:
        keys = [k async for k in redis.scan_iter(match=f"{names.ns}:*", count=10_000)]
        for start in range(0, len(keys), 10_000):
            await redis.delete(*keys[start:start + 10_000])
        await redis.aclose()
