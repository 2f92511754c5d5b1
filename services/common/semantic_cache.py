"""The semantic answer cache: entries in Redis, a vector index in each reader's memory.

Workers `put` an answer: its entry (prompt text and answer) under a tenant-scoped key with a
TTL, and a record (scope, key, expiry, vector) appended to one Redis stream. Routers follow
that stream into a `SemanticIndex` and `lookup` a task: embed its last user message, find the
nearest prompts of the same scope (tenant, kind, tier and everything else in the request),
and serve the closest one that passes the guard and whose entry is still in Redis.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel
from redis.asyncio import Redis

from services.common.cache import CachedAnswer, cacheable
from services.common.embedder import BAD_VECTORS, Embedder, EmbedderError, LocalEmbedder
from services.common.guard import same_question
from services.common.models import Task
from services.common.pair_check import MAX_CHECKS, PairChecker
from services.common.semantic_index import SemanticIndex
from services.common.topology import Names
from services.common.wording import normalise

log = logging.getLogger(__name__)
SYNC_INTERVAL_S = 0.01  # lookups in a burst share one read of the stream
SYNC_BATCH = 10_000
EXPIRE_EVERY_S = 60.0
CANDIDATES = 8


class SemanticEntry(BaseModel):
    tenant: str
    scope: str
    text: str
    answer: CachedAnswer


@dataclass(frozen=True)
class SemanticHit:
    key: str
    similarity: float
    answer: CachedAnswer
    checked: bool = False  # served below the threshold because the pair check agreed


def semantic_cacheable(task: Task) -> bool:
    """Only deterministic tasks that allow caching may be answered by a similar prompt."""
    return cacheable(task) and task.temperature == 0


def sampled_for_verification(task_id: str, share: float) -> bool:
    """Say whether a semantic hit for this task is re-asked for real (a stable share of ids)."""
    digest = hashlib.sha256(f"verify:{task_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") < share * 2**32


def query_text(task: Task) -> str:
    """Return the last user message, the part of a prompt that is compared (case kept: the
    guard reads names from it)."""
    for message in reversed(task.messages):
        if message.role == "user":
            return " ".join(message.content.split())
    return " ".join(task.messages[-1].content.split())


def scope_of(task: Task, tier: str) -> str:
    """Name the bucket a task may be answered from: tenant, kind, tier and the rest of the
    request (other messages, max_tokens, validator) must all be equal."""
    last_user = max((i for i, m in enumerate(task.messages) if m.role == "user"),
                    default=len(task.messages) - 1)
    context = {
        "messages": [[m.role, normalise(m.content)] for i, m in enumerate(task.messages)
                     if i != last_user],
        "max_tokens": task.max_tokens,
        "validator": task.validator.model_dump() if task.validator else None,
    }
    digest = hashlib.sha256(json.dumps(context, sort_keys=True).encode()).hexdigest()[:16]
    return f"{task.tenant}/{task.kind}/{tier}/{digest}"


class SemanticCache:
    """Write and look up semantic entries; `index` is needed only for lookups."""

    def __init__(self, redis: Redis, names: Names, embedder: Embedder, ttl_s: int,
                 index: SemanticIndex | None = None,
                 checker: PairChecker | None = None) -> None:
        self._redis = redis
        self._names = names
        self._embedder = embedder
        self._ttl_s = ttl_s
        self.index = index
        self.checker = checker
        self._stream = names.redis_key("cache", "semantic", "log")
        self._last_id = "0-0"
        self._last_sync = 0.0
        self._last_expire = 0.0
        self._sync_lock = asyncio.Lock()
        # A word-hashing embedder cannot tell synonyms apart, so its hits must also keep the
        # content words; a sentence model's hits are checked for what such models blur.
        self._strict_guard = isinstance(embedder, LocalEmbedder)
        self._embedder_name = f"{type(embedder).__name__}/{embedder.dimensions}"
        self._warned_foreign = False

    async def _embed(self, texts: list[str]) -> np.ndarray:
        """Embed (off the event loop for model embedders) and insist on the expected shape:
        a wrong-length vector is a loud, counted error, never a silent miss."""
        vectors = await self._embedder.embed(texts)
        expected = self.index.dimensions if self.index is not None else \
            self._embedder.dimensions
        if vectors.ndim != 2 or vectors.shape != (len(texts), expected):
            BAD_VECTORS.labels(type(self._embedder).__name__).inc()
            log.warning("semantic cache: the embedder returned shape %s for %d texts, "
                        "expected (%d, %d); semantic lookups and writes are skipped",
                        vectors.shape, len(texts), len(texts), expected)
            raise EmbedderError(f"embedding of shape {vectors.shape}, expected "
                                f"({len(texts)}, {expected})")
        return vectors

    def entry_key(self, task: Task, tier: str) -> str:
        scope = scope_of(task, tier)
        digest = hashlib.sha256(f"{scope}\n{normalise(query_text(task))}".encode()).hexdigest()
        return self._names.redis_key("cache", "semantic", task.tenant, digest)

    async def put(self, task: Task, tier: str, answer: CachedAnswer,
                  now: float | None = None) -> None:
        """Store an answer and announce its vector to every router."""
        await self.put_many([(task, tier, answer)], now)

    async def put_many(self, items: Sequence[tuple[Task, str, CachedAnswer]],
                       now: float | None = None, vectors: np.ndarray | None = None) -> None:
        """Store answers in one round trip (vectors embedded in one batch, unless given:
        the benchmark fills 100,000 entries without running the model 100,000 times)."""
        now = time.time() if now is None else now
        texts = [query_text(task) for task, _, _ in items]
        vectors = await self._embed(texts) if vectors is None else vectors
        oldest_ms = str(max(0, int((now - self._ttl_s) * 1000)))
        async with self._redis.pipeline(transaction=False) as pipe:
            for (task, tier, answer), text, vector in zip(items, texts, vectors, strict=True):
                key = self.entry_key(task, tier)
                entry = SemanticEntry(tenant=task.tenant, scope=scope_of(task, tier), text=text,
                                      answer=answer)
                pipe.set(key, entry.model_dump_json(), ex=self._ttl_s)
                pipe.xadd(self._stream, {"k": key, "s": entry.scope,
                                         "x": str(now + self._ttl_s),
                                         "e": self._embedder_name,
                                         "v": vector.astype(np.float32).tobytes()},
                          minid=oldest_ms, approximate=True)
            await pipe.execute()

    async def evict(self, key: str) -> None:
        await self._redis.delete(key)

    async def lookup(self, task: Task, tier: str, threshold: float,
                     now: float | None = None) -> SemanticHit | None:
        """Return the answer of the closest same-scope prompt that asks the same question:
        at or above `threshold` the guard decides; between the pair check's floor and the
        threshold (when there is a checker) the pair check must agree too."""
        assert self.index is not None, "lookups need an index"
        now = time.time() if now is None else now
        await self.sync(now)
        text = query_text(task)
        scope = scope_of(task, tier)
        vector = (await self._embed([text]))[0]
        floor = threshold if self.checker is None else min(threshold, self.checker.floor)
        candidates = self.index.search(scope, vector, now, floor, CANDIDATES)
        if not candidates:
            return None
        raws = await self._redis.mget([key for key, _ in candidates])
        checks = 0
        for (key, similarity), raw in zip(candidates, raws, strict=True):
            if raw is None:  # expired or evicted in Redis: forget it here too
                self.index.remove(scope, key)
                continue
            entry = SemanticEntry.model_validate_json(raw)
            if entry.tenant != task.tenant or entry.scope != scope:
                continue  # never serve another tenant's answer, whatever the index says
            if normalise(entry.text) == normalise(text):
                return SemanticHit(key, similarity, entry.answer)
            if not same_question(entry.text, text, strict=self._strict_guard).same:
                continue
            if similarity >= threshold:
                return SemanticHit(key, similarity, entry.answer)
            if self.checker is not None and checks < MAX_CHECKS:
                checks += 1  # each check is a model run: a lookup pays for a few at most
                if await self.checker.same(entry.text, text):
                    return SemanticHit(key, similarity, entry.answer, checked=True)
        return None

    async def sync(self, now: float | None = None, force: bool = False) -> None:
        """Read new stream records into the index (at most every SYNC_INTERVAL_S)."""
        assert self.index is not None
        now = time.time() if now is None else now
        if not force and (now - self._last_sync < SYNC_INTERVAL_S or self._sync_lock.locked()):
            return
        async with self._sync_lock:
            while True:
                batch: Any = await self._redis.xread({self._stream: self._last_id},
                                                     count=SYNC_BATCH)
                records = batch[0][1] if batch else []
                self.index.add_many(r for r in map(self._decode, (f for _, f in records))
                                    if r is not None and r[3] > now)
                if records:
                    self._last_id = records[-1][0]
                if len(records) < SYNC_BATCH:
                    break
            self._last_sync = now
            if now - self._last_expire >= EXPIRE_EVERY_S:
                self.index.expire(now)
                self._last_expire = now

    def _decode(self, fields: dict[bytes, bytes]) -> tuple[str, str, np.ndarray, float] | None:
        """Return a stream record as (scope, key, vector, expires_at)."""
        vector = np.frombuffer(fields[b"v"], dtype=np.float32)
        maker = fields.get(b"e", b"").decode()
        if (self.index is None or vector.shape[0] != self.index.dimensions
                or (maker and maker != self._embedder_name)):
            # Written by another embedder (a service not yet upgraded, or another config):
            # its vectors are not comparable with ours. Counted, and said once.
            BAD_VECTORS.labels("stream").inc()
            if not self._warned_foreign:
                self._warned_foreign = True
                log.warning("semantic cache: skipping entries embedded by %s (%d-long); this "
                            "reader uses %s: give every router and worker the same [cache] "
                            "embedder", maker or "an older version", vector.shape[0],
                            self._embedder_name)
            return None
        return (fields[b"s"].decode(), fields[b"k"].decode(), vector, float(fields[b"x"]))


class VerifyStats:
    """Count semantic hits re-asked for real and how many of them the model disagreed with."""

    def __init__(self, redis: Redis, names: Names) -> None:
        self._redis = redis
        self._key = names.redis_key("cache", "semantic", "verify")

    async def record(self, agreed: bool) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hincrby(self._key, "verified", 1)
            pipe.hincrby(self._key, "disagreed", 0 if agreed else 1)
            await pipe.execute()

    async def false_hit_rate(self) -> tuple[int, float]:
        """Return (hits verified, share of them the model answered differently)."""
        verified, disagreed = await self._redis.hmget(self._key, "verified", "disagreed")
        total = int(verified or 0)
        return total, (int(disagreed or 0) / total if total else 0.0)
