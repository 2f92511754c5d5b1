"""The semantic cache: embedder, guard, index, Redis store and the stack answering from it."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from redis.asyncio import Redis

from bench.cost_stack import CostStack, cost_stack
from services.common.cache import CachedAnswer
from services.common.config import AgentqConfig, load_config
from services.common.cost_config import TUNED_THRESHOLDS, CacheConfig
from services.common.embedder import (
    EmbedderError,
    LocalEmbedder,
    MiniLMEmbedder,
    ProviderEmbedder,
    SentenceEmbedder,
    make_embedder,
)
from services.common.guard import answers_agree, same_question
from services.common.models import Task, Usage
from services.common.semantic_cache import (
    SemanticCache,
    VerifyStats,
    sampled_for_verification,
    semantic_cacheable,
)
from services.common.semantic_index import BRUTE_FORCE_MAX, SemanticIndex
from services.common.settings import Settings
from services.common.topology import Names

PAIRS = Path(__file__).resolve().parent.parent / "bench" / "data" / "paraphrase_pairs.jsonl"
EMBEDDER = LocalEmbedder(256)


def cosine(a: str, b: str) -> float:
    va, vb = EMBEDDER.embed_now([a, b])
    return float(va @ vb)


def test_local_embedder_is_deterministic_unit_and_puts_rewordings_close() -> None:
    vectors = EMBEDDER.embed_now(["Cancel my order", "cancel my order", "", "x"])
    assert vectors.dtype == np.float32 and vectors.shape == (4, 256)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(vectors[0], LocalEmbedder(256).embed_now(["Cancel my order"])[0])
    assert cosine("cancel my order", "please cancel my order!") > 0.85
    assert cosine("I never recieved my order", "I never received my order") > 0.7
    assert cosine("cancel my order", "what is the weather in Paris") < 0.2


def test_embedders_are_chosen_by_the_tier_table() -> None:
    raw = load_config(None).model_dump()
    assert isinstance(make_embedder(AgentqConfig.model_validate(raw)), LocalEmbedder)  # unused
    raw["cache"] = {"semantic_kinds": ["chat"]}
    assert isinstance(make_embedder(AgentqConfig.model_validate(raw)), MiniLMEmbedder)
    raw["cache"] = {"embedder": "local"}
    assert isinstance(make_embedder(AgentqConfig.model_validate(raw)), LocalEmbedder)
    raw["cache"] = {"embedder": "provider", "embedder_model": "nowhere/text-embedding-3-small"}
    with pytest.raises(EmbedderError, match="provider/model"):
        make_embedder(AgentqConfig.model_validate(raw))
    raw["cache"] = {"embedder": "provider", "embedder_model": "mock/text-embedding-3-small"}
    assert isinstance(make_embedder(AgentqConfig.model_validate(raw)), ProviderEmbedder)
    with pytest.raises(EmbedderError):  # no onnxruntime here, or no model in that directory
        SentenceEmbedder("/nonexistent/model-dir")


@pytest.mark.parametrize(("a", "b", "reason"), [
    ("cancel my order", "don't cancel my order", "negation"),
    ("cancel my order", "cancel my subscription", "words"),
    ("refund $20", "refund $200", "numbers"),
    ("I was charged $49.99", "I was charged $59.99", "numbers"),
    ("where is order 12345", "where is order 12346", "numbers"),
    ("what is the weather in Paris", "what is the weather in London", "entities"),
    ("convert 100 USD to EUR", "convert 100 EUR to USD", "entities"),
    ("transfer $50 from savings to checking", "transfer $50 from checking to savings",
     "direction"),
    ("is plan A cheaper than plan B", "is plan B cheaper than plan A", "direction"),
    ("upgrade my plan", "downgrade my plan", "words"),
    ("the refund has been processed", "the refund has not been processed", "negation"),
    ("I can log in", "I can't log in", "negation"),
])
def test_guard_refuses_near_misses(a: str, b: str, reason: str) -> None:
    verdict = same_question(a, b)
    assert not verdict.same and verdict.reason.startswith(reason)
    assert not same_question(b, a).same


@pytest.mark.parametrize(("a", "b"), [
    ("cancel my order", "Hi, could you please cancel my order?"),
    ("my order hasn't arrived", "my order has not arrived"),
    ("I never recieved my order", "I never received my order"),
    ("cancel my orders", "cancel my order"),
    ("refund me and cancel order 1234 please", "please cancel order 1234 and refund me"),
    ("WHERE IS MY ORDER", "where is my order?"),
])
def test_guard_lets_rewordings_through(a: str, b: str) -> None:
    assert same_question(a, b).same


def test_the_semantic_layer_is_off_unless_a_kind_opts_in() -> None:
    assert CacheConfig().semantic_threshold("classify") is None
    assert CacheConfig(semantic_kinds=["classify"]).semantic_threshold("chat") is None
    assert CacheConfig(semantic_kinds=["classify"], embedder="local").semantic_threshold(
        "classify") == TUNED_THRESHOLDS["local"]["classify"]
    assert CacheConfig(semantic_kinds=["*"], embedder="local").semantic_threshold("reason")
    assert CacheConfig(semantic_thresholds={"chat": 0.9}).semantic_threshold("chat") == 0.9
    assert CacheConfig(semantic_default_threshold=0.8).semantic_threshold("reason") == 0.8
    assert CacheConfig(semantic=False, semantic_kinds=["*"]).semantic_threshold("chat") is None


def test_precision_and_recall_on_the_labelled_pairs() -> None:
    # The thresholds these 178 pairs were tuned with, opted in explicitly (the defaults are
    # now tuned on bench/data/semantic_pairs/train.jsonl).
    config = CacheConfig(semantic_thresholds={"classify": 0.70, "extract": 0.85,
                                              "summarize": 0.90, "chat": 0.85})
    rows = [json.loads(line) for line in PAIRS.read_text().splitlines()]
    assert len(rows) >= 150 and sum(not r["match"] for r in rows) >= 75
    predicted = [cosine(r["a"], r["b"]) >= (config.semantic_threshold(r["kind"]) or 2)
                 and same_question(r["a"], r["b"]).same for r in rows]
    hits = [r["match"] for r, p in zip(rows, predicted, strict=True) if p]
    precision = sum(hits) / len(hits)
    recall = sum(hits) / sum(r["match"] for r in rows)
    assert precision >= 0.98 and recall >= 0.6, (precision, recall)


def test_answers_agree() -> None:
    assert answers_agree('{"a": 1, "b": 2}', '{"b": 2, "a": 1}')
    assert answers_agree("Refund.", " refund")
    assert not answers_agree("refund", "delivery")


def _templated(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    verbs = ["cancel", "track", "return", "change", "pay", "close", "reset", "upgrade"]
    nouns = ["order", "parcel", "invoice", "account", "password", "plan", "card", "address"]
    return [f"Classify: I want to {verbs[rng.integers(8)]} my {nouns[rng.integers(8)]} "
            f"number {rng.integers(100_000)} from store {rng.integers(500)}. labels: a, b"
            for _ in range(n)]


@pytest.mark.parametrize("size", [500, BRUTE_FORCE_MAX * 2])
def test_index_finds_what_brute_force_finds(size: int) -> None:
    texts = _templated(size, seed=size)
    vectors = EMBEDDER.embed_now(texts)
    index = SemanticIndex(256)
    index.add_many(("scope", f"k{i}", v, 1e12) for i, v in enumerate(vectors))
    assert index.shard("scope").uses_lsh == (size > BRUTE_FORCE_MAX)  # type: ignore[union-attr]
    queries = EMBEDDER.embed_now([f"Please {t.lower()}" for t in texts[:200]])
    agree = 0
    for query in queries:
        scores = vectors @ query
        best = int(np.argmax(scores))
        found = index.search("scope", query, now=0, min_score=0.7, k=3)
        assert all(score == pytest.approx(float(scores[int(key[1:])]), abs=1e-5)
                   for key, score in found)
        agree += bool(found) and found[0][0] == f"k{best}"
    assert agree >= 198  # LSH may miss a neighbour now and then; brute force never does


def test_index_removes_replaces_and_expires() -> None:
    index = SemanticIndex(256)
    a, b = EMBEDDER.embed_now(["refund my order", "track my parcel"])
    index.add("s", "k1", a, expires_at=100)
    index.add("s", "k2", b, expires_at=200)
    assert index.search("s", a, now=0, min_score=0.9)[0][0] == "k1"
    assert index.search("other", a, now=0, min_score=0.9) == []
    assert index.search("s", a, now=150, min_score=0.9) == []  # k1 expired
    index.add("s", "k1", a, expires_at=300)  # replaced with a later expiry
    assert index.search("s", a, now=150, min_score=0.9)[0][0] == "k1"
    index.remove("s", "k1")
    assert index.search("s", a, now=0, min_score=0.9) == []
    index.expire(now=1_000)
    assert len(index) == 0 and index.shard("s") is None


@pytest.mark.parametrize(("fields", "expected"), [
    ({}, True), ({"cache": "off"}, False), ({"temperature": 0.7}, False),
    ({"temperature": 0.7, "cache": "on"}, False), ({"cache": "on"}, True)])
def test_only_deterministic_cacheable_tasks_use_it(fields: dict[str, object],
                                                   expected: bool) -> None:
    assert semantic_cacheable(Task(prompt="x", **fields)) is expected  # type: ignore[arg-type]


def test_verification_sampling_is_a_stable_share_of_task_ids() -> None:
    ids = [str(uuid.UUID(int=i)) for i in range(10_000)]
    assert not any(sampled_for_verification(i, 0.0) for i in ids)
    assert all(sampled_for_verification(i, 1.0) for i in ids)
    share = sum(sampled_for_verification(i, 0.1) for i in ids) / len(ids)
    assert 0.09 < share < 0.11
    assert sampled_for_verification(ids[7], 0.5) == sampled_for_verification(ids[7], 0.5)


def _answer(text: str) -> CachedAnswer:
    return CachedAnswer(output=text, model="gpt-4o-mini", tier="cheap",
                        usage=Usage(prompt_tokens=10, completion_tokens=2), task_id="t0")


def test_store_scopes_answers_by_tenant_kind_and_tier(settings: Settings) -> None:
    async def scenario() -> None:
        redis = Redis.from_url(settings.redis_url)
        names = Names(settings.namespace)
        writer = SemanticCache(redis, names, EMBEDDER, ttl_s=60)
        reader = SemanticCache(redis, names, EMBEDDER, ttl_s=60, index=SemanticIndex(256))
        original = Task(tenant="acme", kind="classify", prompt="cancel my order")
        await writer.put(original, "cheap", _answer("cancel"))
        asked = {"kind": "classify", "prompt": "Please cancel my order!"}
        hit = await reader.lookup(Task(tenant="acme", **asked), "cheap", 0.7)  # type: ignore[arg-type]
        assert hit is not None and hit.answer.output == "cancel" and hit.similarity > 0.7
        assert await reader.lookup(Task(tenant="other", **asked), "cheap", 0.7) is None  # type: ignore[arg-type]
        assert await reader.lookup(Task(tenant="acme", **asked), "standard", 0.7) is None  # type: ignore[arg-type]
        assert await reader.lookup(Task(tenant="acme", kind="chat", prompt=asked["prompt"]),
                                   "cheap", 0.7) is None
        negated = Task(tenant="acme", kind="classify", prompt="don't cancel my order")
        assert await reader.lookup(negated, "cheap", 0.5) is None
        with_system = Task(tenant="acme", kind="classify", messages=[
            {"role": "system", "content": "answer in French"},
            {"role": "user", "content": "cancel my order"}])
        assert await reader.lookup(with_system, "cheap", 0.7) is None  # another context

        late_reader = SemanticCache(redis, names, EMBEDDER, ttl_s=60, index=SemanticIndex(256))
        assert await late_reader.lookup(Task(tenant="acme", **asked), "cheap", 0.7)  # type: ignore[arg-type]
        await writer.evict(hit.key)
        assert await reader.lookup(Task(tenant="acme", **asked), "cheap", 0.7) is None  # type: ignore[arg-type]
        await redis.aclose()

    asyncio.run(scenario())


def test_entries_expire_with_their_ttl(settings: Settings) -> None:
    async def scenario() -> None:
        redis = Redis.from_url(settings.redis_url)
        cache = SemanticCache(redis, Names(settings.namespace), EMBEDDER, ttl_s=1,
                              index=SemanticIndex(256))
        task = Task(kind="classify", prompt=f"refund order {uuid.uuid4().int % 10_000}")
        await cache.put(task, "cheap", _answer("refund"))
        assert await cache.lookup(task, "cheap", 0.7) is not None
        assert 0 < await redis.ttl(cache.entry_key(task, "cheap")) <= 1
        deadline = time.monotonic() + 5
        while await cache.lookup(task, "cheap", 0.7) is not None:
            assert time.monotonic() < deadline, "the entry outlived its TTL"
            await asyncio.sleep(0.1)
        await redis.aclose()

    asyncio.run(scenario())


CACHE = """
[cache]
verify_share = 0.5
embedder = "local"
semantic_kinds = ["classify", "chat"]
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CostStack]:
    with cost_stack(tmp_path_factory.mktemp("semantic"), extra=CACHE) as running:
        yield running


def _id(sampled: bool) -> str:
    while True:
        task_id = str(uuid.uuid4())
        if sampled_for_verification(task_id, 0.5) == sampled:
            return task_id


def test_the_stack_answers_rewordings_from_the_semantic_cache(stack: CostStack) -> None:
    tag = uuid.uuid4().hex[:6]
    labels = "labels: cancel, refund, other"
    base = {"kind": "classify", "tenant": f"sem-{tag}"}
    [first] = stack.run([{**base, "prompt": f"Cancel my order {tag}. {labels}"}])
    calls = stack.stats()["requests"]
    hit, negated, other_tenant, off, warm = stack.run([
        {**base, "id": _id(False), "prompt": f"please, cancel my order {tag}! {labels}"},
        {**base, "prompt": f"Don't cancel my order {tag}. {labels}"},
        {**base, "id": _id(False), "tenant": "someone-else",
         "prompt": f"please, cancel my order {tag}! {labels}"},
        {**base, "id": _id(False), "cache": "off",
         "prompt": f"please cancel my order {tag}. {labels}"},
        {**base, "id": _id(False), "temperature": 0.9,
         "prompt": f"cancel my order {tag} please. {labels}"},
    ])
    assert hit["cache"] == "semantic" and hit["output"] == first["output"]
    assert hit["cost_usd"] == 0 and hit["cost_saved_usd"] > 0
    assert hit["cached_from"] == first["task_id"] and ";semantic:" in hit["route_reason"]
    for miss in (negated, other_tenant, off, warm):
        assert miss["cache"] == "miss" and miss["status"] == "succeeded"
    assert stack.stats()["requests"] - calls == 4


def test_a_sampled_semantic_hit_is_verified_by_a_real_call(stack: CostStack,
                                                          settings: Settings) -> None:
    tag = uuid.uuid4().hex[:6]
    base = {"kind": "chat", "tenant": f"verify-{tag}"}
    stack.run([{**base, "prompt": f"what are the opening hours of shop {tag}"}])
    reworded = f"Quick question: what are the opening hours of shop {tag}?"
    [checked] = stack.run([{**base, "id": _id(True), "prompt": reworded}])
    assert checked["cache"] == "miss" and checked["route_reason"].endswith(";verify")

    async def stats() -> tuple[int, float]:
        redis = Redis.from_url(settings.redis_url)
        try:
            return await VerifyStats(redis, Names(stack.ns)).false_hit_rate()
        finally:
            await redis.aclose()

    verified, false_rate = asyncio.run(stats())
    # The simulated provider words its answer after the exact prompt, so it disagrees.
    assert verified >= 1 and false_rate > 0
    [after] = stack.run([{**base, "id": _id(False),
                          "prompt": f"what are the opening hours of shop {tag}, please"}])
    assert after["cache"] != "semantic" or after["cached_from"] == checked["task_id"]


def test_the_provider_embedder_calls_v1_embeddings(stack: CostStack) -> None:
    async def embed() -> np.ndarray:
        embedder = ProviderEmbedder(f"{stack.mock}/v1", "", "text-embedding-3-small", 64)
        try:
            return await embedder.embed(["cancel my order", "cancel my order please"])
        finally:
            await embedder.close()

    vectors = asyncio.run(embed())
    assert vectors.shape == (2, 64) and float(vectors[0] @ vectors[1]) > 0.5
