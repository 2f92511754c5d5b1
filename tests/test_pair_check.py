"""The pair check (second check of borderline semantic hits): shipped weights load offline,
a missing or broken weight file falls back to plain thresholds, the guard still refuses
changed numbers, negations and names before the check is asked, lookups use it only between
its floor and the threshold, and the weights are reproducible from the train half."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import numpy as np
import pytest
from redis.asyncio import Redis

from bench.semantic_pair_train import train
from services.common import pair_check
from services.common.cache import CachedAnswer
from services.common.cost_config import CacheConfig
from services.common.embedder import LocalEmbedder, MiniLMEmbedder
from services.common.models import Task, Usage
from services.common.pair_check import (
    WEIGHTS,
    CheckWeights,
    PairChecker,
    PairCheckError,
    load_weights,
    make_pair_checker,
    pair_features,
)
from services.common.semantic_cache import SemanticCache
from services.common.semantic_index import SemanticIndex
from services.common.settings import Settings
from services.common.topology import Names

OPTED_IN = CacheConfig(semantic_kinds=["*"], second_check="auto")


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    return MiniLMEmbedder()


def with_rule(cutoff: float, floor: float) -> CheckWeights:
    """The shipped weights with another decision rule (to drive a lookup either way)."""
    return load_weights().model_copy(update={"cutoff": cutoff, "floor": floor})


def test_the_weights_ship_in_the_package_and_load_with_no_network(
        monkeypatch: pytest.MonkeyPatch, minilm: MiniLMEmbedder) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the pair check tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    assert WEIGHTS.parent == Path(pair_check.__file__).parent and WEIGHTS.suffix == ".json"
    checker = make_pair_checker(OPTED_IN, minilm)
    assert checker is not None and 0.5 <= checker.floor < 1.0
    assert 0.0 < checker.weights.cutoff < 1.0
    scores = checker.scores_now([("How do I reset my password?", "How can I reset my password?"),
                                 ("How do I sort a list in Python?",
                                  "How do I reverse a list in Python?")])
    assert scores.shape == (2,) and scores[0] > scores[1]


def test_it_is_off_by_default_and_only_for_minilm(minilm: MiniLMEmbedder) -> None:
    assert CacheConfig().second_check == "off"
    assert make_pair_checker(CacheConfig(semantic_kinds=["*"]), minilm) is None
    assert make_pair_checker(CacheConfig(second_check="auto"), minilm) is None  # no kind in
    assert make_pair_checker(OPTED_IN, LocalEmbedder()) is None


def test_a_missing_or_broken_weight_file_means_no_second_check_with_one_warning(
        tmp_path: Path, minilm: MiniLMEmbedder, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(pair_check, "_warned", False)
    with caplog.at_level(logging.WARNING, logger="services.common.pair_check"):
        assert make_pair_checker(OPTED_IN, minilm, tmp_path / "gone.json") is None
        assert make_pair_checker(OPTED_IN, minilm, tmp_path / "gone.json") is None
    assert len(caplog.records) == 1 and "no pair-check weights" in caplog.records[0].message
    broken = tmp_path / "broken.json"
    broken.write_text(load_weights().model_dump_json().replace('"cosine"', '"other"'))
    with pytest.raises(PairCheckError, match="unusable"):
        load_weights(broken)
    assert make_pair_checker(OPTED_IN, minilm, broken) is None


def test_features_are_symmetric(minilm: MiniLMEmbedder) -> None:
    a, b = "Refund the $200 you charged me", "Can I get my $200 back?"
    rows_a, rows_b = minilm.tokens_now([a, b])
    assert np.allclose(pair_features(a, b, rows_a, rows_b), pair_features(b, a, rows_b, rows_a))
    cosine = pair_features(a, b, rows_a, rows_b)[0]
    vectors = minilm.embed_now([a, b])
    assert cosine == pytest.approx(float(vectors[0] @ vectors[1]), abs=1e-4)


def _answer(text: str) -> CachedAnswer:
    return CachedAnswer(output=text, model="gpt-4o-mini", tier="cheap",
                        usage=Usage(prompt_tokens=10, completion_tokens=2), task_id="t0")


async def _lookup(settings: Settings, minilm: MiniLMEmbedder, weights: CheckWeights,
                  cached: str, asked: str, threshold: float) -> tuple[bool, bool]:
    """Cache `cached`, look `asked` up; return (hit, served by the pair check)."""
    redis = Redis.from_url(settings.redis_url)
    try:
        cache = SemanticCache(redis, Names(settings.namespace), minilm, ttl_s=60,
                              index=SemanticIndex(minilm.dimensions),
                              checker=PairChecker(minilm, weights))
        await cache.put(Task(tenant="acme", kind="classify", prompt=cached), "cheap",
                        _answer(cached))
        hit = await cache.lookup(Task(tenant="acme", kind="classify", prompt=asked), "cheap",
                                 threshold)
        return hit is not None, hit is not None and hit.checked
    finally:
        await redis.aclose()


def test_a_borderline_candidate_is_served_only_when_the_check_agrees(
        settings: Settings, minilm: MiniLMEmbedder) -> None:
    cached, asked = "Please cancel my order.", "cancel my order please"  # cosine ~0.94
    agree, refuse = with_rule(cutoff=0.0, floor=0.5), with_rule(cutoff=1.0, floor=0.5)
    assert asyncio.run(_lookup(settings, minilm, agree, cached, asked, 0.999)) == (True, True)
    assert asyncio.run(_lookup(settings, minilm, refuse, cached, asked, 0.999)) == (False, False)
    # Above the threshold the check is not asked; below its floor nothing is served.
    assert asyncio.run(_lookup(settings, minilm, refuse, cached, asked, 0.5)) == (True, False)
    assert asyncio.run(_lookup(settings, minilm, with_rule(0.0, 0.999), cached, asked,
                               0.9999)) == (False, False)


@pytest.mark.parametrize("cached, asked", [
    ("Refund the $20 you charged to my card", "Refund the $200 you charged to my card"),
    ("Cancel my order for the blue lamp", "Don't cancel my order for the blue lamp"),
    ("Ship my parcel to Paris by Friday", "Ship my parcel to London by Friday"),
])
def test_a_changed_number_negation_or_name_is_refused_even_if_the_check_agrees(
        settings: Settings, minilm: MiniLMEmbedder, cached: str, asked: str) -> None:
    accept_all = with_rule(cutoff=0.0, floor=0.0)
    assert asyncio.run(_lookup(settings, minilm, accept_all, cached, asked, 0.9999)) == \
        (False, False)


def test_the_shipped_weights_are_reproduced_from_the_train_half(
        minilm: MiniLMEmbedder) -> None:
    shipped, again = load_weights(), train(minilm, verbose=False)
    assert again.floor == shipped.floor and again.trained_on == shipped.trained_on
    for field in ("mean", "scale", "coef"):
        assert np.allclose(getattr(again, field), getattr(shipped, field), atol=1e-3), field
    assert again.bias == pytest.approx(shipped.bias, abs=1e-3)
    assert again.cutoff == pytest.approx(shipped.cutoff, abs=1e-3)
