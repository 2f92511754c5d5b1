"""A second check for borderline semantic hits: a small learned pair classifier.

A cosine between two sentence vectors cannot tell "refund the $200" from "why was I charged
$200?": both share most of their meaning. For a candidate below the kind's threshold but
above `floor`, that has passed the guard, the check reads both prompts again word piece by
word piece (one MiniLM run of the two texts) and scores how well every content piece of one
finds a counterpart in the other, how many content words they share, and the cosine, with a
logistic regression trained on the TRAIN half of `bench/data/semantic_pairs` only
(`python -m bench.semantic_pair_train` writes `pair_check_weights.json` beside this file).
A hit needs the probability to reach the cutoff chosen there by cross-validation by source
question for precision >= 0.98. Without the weight file (or without MiniLM, whose vectors
the weights were fitted to) there is no second check: the cache keeps its plain threshold.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ValidationError, model_validator

from services.common.cost_config import CacheConfig
from services.common.embedder import Embedder, MiniLMEmbedder, SentenceEmbedder
from services.common.wording import FILLER, STOPWORDS, content_words, tokens

log = logging.getLogger(__name__)
WEIGHTS = Path(__file__).with_name("pair_check_weights.json")
FEATURES = ("cosine", "worst_alignment", "worst_alignment_other", "mean_alignment",
            "low_alignment", "shared_words", "length_gap")
_SPECIAL = frozenset({"[CLS]", "[SEP]", "[PAD]"})
MAX_CHECKS = 2  # second checks per lookup: each is one model run (~5 ms)
_warned = False

TokenRows = tuple[list[str], np.ndarray]  # word pieces and their contextual vectors


class PairCheckError(Exception):
    """The pair check's weights are missing or unusable."""


class CheckWeights(BaseModel):
    """A fitted logistic regression over FEATURES, standardised, with its decision rule."""

    features: list[str]
    mean: list[float]
    scale: list[float]
    coef: list[float]
    bias: float
    cutoff: float  # probability a borderline pair needs to be served
    floor: float  # cosine below which no pair is checked (nor served)
    embedder: str = "minilm"
    trained_on: str = ""

    @model_validator(mode="after")
    def _shapes(self) -> CheckWeights:
        if self.features != list(FEATURES):
            raise ValueError(f"weights are for features {self.features}, not {list(FEATURES)}")
        if not len(self.mean) == len(self.scale) == len(self.coef) == len(FEATURES):
            raise ValueError("mean, scale and coef must have one value per feature")
        if any(s <= 0 for s in self.scale):
            raise ValueError("scale values must be positive")
        return self


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-9)


def content_rows(pieces: list[str], hidden: np.ndarray) -> np.ndarray:
    """Return the unit vectors of the word pieces that carry meaning (no markers,
    punctuation, stopwords or politeness); all pieces if none does."""
    keep = [i for i, piece in enumerate(pieces)
            if piece not in _SPECIAL and any(c.isalnum() for c in piece)
            and piece.lstrip("#") not in STOPWORDS and piece.lstrip("#") not in FILLER]
    return _unit(hidden[keep] if keep else hidden)


def pair_features(a: str, b: str, rows_a: TokenRows, rows_b: TokenRows) -> np.ndarray:
    """Return FEATURES for a pair, symmetric in a and b (pure)."""
    pooled_a, pooled_b = _unit(rows_a[1].mean(axis=0)), _unit(rows_b[1].mean(axis=0))
    similarity = content_rows(*rows_a) @ content_rows(*rows_b).T
    best_a, best_b = similarity.max(axis=1), similarity.max(axis=0)
    words_a, words_b = set(content_words(tokens(a))), set(content_words(tokens(b)))
    union = max(1, len(words_a | words_b))
    return np.array([
        float(pooled_a @ pooled_b),
        min(best_a.min(), best_b.min()),
        max(best_a.min(), best_b.min()),
        (best_a.mean() + best_b.mean()) / 2,
        min(np.percentile(best_a, 25), np.percentile(best_b, 25)),
        len(words_a & words_b) / union,
        abs(len(words_a) - len(words_b)) / union,
    ], dtype=np.float64)


def probability(weights: CheckWeights, features: np.ndarray) -> np.ndarray:
    """Return the fitted probability that each row of features is the same question."""
    z = ((np.atleast_2d(features) - np.asarray(weights.mean)) / np.asarray(weights.scale)
         ) @ np.asarray(weights.coef) + weights.bias
    return np.asarray(1.0 / (1.0 + np.exp(-z)))


def load_weights(path: Path = WEIGHTS) -> CheckWeights:
    try:
        return CheckWeights.model_validate_json(path.read_text())
    except OSError as exc:
        raise PairCheckError(f"no pair-check weights at {path} ({exc.strerror})") from None
    except ValidationError as exc:
        raise PairCheckError(f"unusable pair-check weights at {path}: {exc}") from None


class PairChecker:
    """Score borderline pairs with the sentence model's word pieces and the fitted weights."""

    def __init__(self, model: SentenceEmbedder, weights: CheckWeights) -> None:
        self._model = model
        self.weights = weights
        self.floor = weights.floor

    def scores_now(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Return each pair's probability (blocking: one model run for all the texts)."""
        if not pairs:
            return np.zeros(0)
        texts = sorted({text for pair in pairs for text in pair})
        rows = dict(zip(texts, self._model.tokens_now(texts), strict=True))
        features = np.stack([pair_features(a, b, rows[a], rows[b]) for a, b in pairs])
        return probability(self.weights, features)

    def same_now(self, a: str, b: str) -> bool:
        return bool(self.scores_now([(a, b)])[0] >= self.weights.cutoff)

    async def same(self, a: str, b: str) -> bool:
        """Say whether `b` asks what `a` asks, off the event loop."""
        return await asyncio.to_thread(self.same_now, a, b)


def make_pair_checker(cache: CacheConfig, embedder: Embedder,
                      path: Path = WEIGHTS) -> PairChecker | None:
    """Build the second check `[cache] second_check` asks for, or None (with one warning
    when "auto" cannot have it: the cache then keeps its plain thresholds)."""
    global _warned
    if cache.second_check == "off" or not cache.semantic_in_use():
        return None
    reason = ""
    if not isinstance(embedder, MiniLMEmbedder):
        reason = f"its weights fit MiniLM vectors, and the embedder is {type(embedder).__name__}"
    else:
        try:
            return PairChecker(embedder, load_weights(path))
        except PairCheckError as exc:
            reason = str(exc)
    if not _warned:
        _warned = True
        log.warning("semantic cache: no second check for borderline hits (%s); hits need "
                    "the kind's threshold", reason)
    return None
