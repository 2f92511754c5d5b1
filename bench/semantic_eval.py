"""Score semantic-cache decisions on the labelled pairs: shared by the threshold tuner and
`agentq bench cache`. Scoring is pure; only `embed_pairs` runs a model."""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from services.common.cost_config import ALL_KINDS
from services.common.guard import same_question
from services.common.pair_check import PairChecker

PAIRS_DIR = Path(__file__).resolve().parent / "data" / "semantic_pairs"
TARGET_PRECISION = 0.98
MIN_HITS = 20  # a threshold is only trusted with this many hits above it on train


def load_pairs(half: str) -> list[dict[str, Any]]:
    path = PAIRS_DIR / f"{half}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass(frozen=True)
class Scored:
    """One pair with its cosine and the guard's verdict."""

    row: dict[str, Any]
    similarity: float
    guard_ok: bool
    check: float = 0.0  # the pair check's probability (0 where it was not asked)

    @property
    def same(self) -> bool:
        return bool(self.row["label"] == "same")


def embed_pairs(embed_now: Callable[[Sequence[str]], np.ndarray], rows: list[dict[str, Any]],
                strict: bool, batch: int = 32) -> tuple[list[Scored], float]:
    """Embed every text of the pairs in batches; return the scored pairs and ms per text."""
    texts = sorted({text for row in rows for text in (row["a"], row["b"])})
    vectors: dict[str, np.ndarray] = {}
    started = time.perf_counter()
    for start in range(0, len(texts), batch):
        chunk = texts[start:start + batch]
        vectors.update(zip(chunk, embed_now(chunk), strict=True))
    ms_per_text = (time.perf_counter() - started) * 1000 / max(1, len(texts))
    scored = [Scored(row, float(vectors[row["a"]] @ vectors[row["b"]]),
                     same_question(row["a"], row["b"], strict=strict).same) for row in rows]
    return scored, ms_per_text


@dataclass
class Outcome:
    hits: int = 0
    wrong: int = 0
    must_match: int = 0
    wrong_by_kind: Counter[str] = field(default_factory=Counter)
    missed_by_kind: Counter[str] = field(default_factory=Counter)

    @property
    def precision(self) -> float:
        return (self.hits - self.wrong) / self.hits if self.hits else 1.0

    @property
    def recall(self) -> float:
        return (self.hits - self.wrong) / self.must_match if self.must_match else 0.0

    @property
    def wrong_share(self) -> float:
        return self.wrong / self.hits if self.hits else 0.0


def check_pairs(checker: PairChecker, scored: list[Scored], batch: int = 32
                ) -> tuple[list[Scored], float]:
    """Ask the pair check about every guard-passing pair above its floor (as a lookup
    would); return the pairs with their probabilities and the ms of one check alone."""
    asked = [i for i, p in enumerate(scored) if p.guard_ok and p.similarity >= checker.floor]
    probabilities: dict[int, float] = {}
    for start in range(0, len(asked), batch):
        chunk = asked[start:start + batch]
        got = checker.scores_now([(scored[i].row["a"], scored[i].row["b"]) for i in chunk])
        probabilities.update(zip(chunk, map(float, got), strict=True))
    sample = asked[:60]
    started = time.perf_counter()
    for i in sample:
        checker.same_now(scored[i].row["a"], scored[i].row["b"])
    ms = (time.perf_counter() - started) * 1000 / max(1, len(sample))
    return [replace(p, check=probabilities.get(i, 0.0)) for i, p in enumerate(scored)], ms


def outcome(scored: list[Scored], thresholds: Callable[[str], float | None],
            use_guard: bool = True, second: tuple[float, float] | None = None) -> Outcome:
    """Count hits, wrong hits and misses when each pair's task kind uses `thresholds`;
    `second` = (floor, cutoff): a guarded pair between floor and threshold is a hit when
    its pair-check probability reaches the cutoff (as `SemanticCache.lookup` decides)."""
    result = Outcome()
    for pair in scored:
        threshold = thresholds(pair.row["task"])
        guarded = pair.guard_ok or not use_guard
        checked = (second is not None and threshold is not None and guarded
                   and pair.similarity >= second[0] and pair.check >= second[1])
        hit = checked or (threshold is not None and pair.similarity >= threshold and guarded)
        result.must_match += pair.same
        if hit:
            result.hits += 1
            if not pair.same:
                result.wrong += 1
                result.wrong_by_kind[pair.row["kind"]] += 1
        elif pair.same:
            result.missed_by_kind[pair.row["kind"]] += 1
    return result


def lowest_safe_threshold(scored: list[Scored], target: float = TARGET_PRECISION,
                          min_hits: int = MIN_HITS) -> float | None:
    """Return the lowest cosine at which the guarded hits, and those of every higher
    threshold, reach `target` precision with at least `min_hits` hits; None if none does.

    Requiring every higher threshold to pass too keeps a lucky dip in the curve from being
    picked: the chosen value sits in a stretch where precision is reliably above target.
    """
    best = safe_cutoff(((p.similarity, p.same) for p in scored if p.guard_ok), target,
                       min_hits)
    return None if best is None else math.ceil(best * 100) / 100  # rounded up: safe side


def safe_cutoff(points: Iterable[tuple[float, bool]], target: float = TARGET_PRECISION,
                min_hits: int = MIN_HITS) -> float | None:
    """Return the lowest score at which the (score, same) points at or above it, and at or
    above every higher score, reach `target` precision with at least `min_hits`; or None."""
    best: float | None = None
    right = wrong = 0
    for score, same in sorted(points, reverse=True):  # from the highest score down
        right += same
        wrong += not same
        if right + wrong >= min_hits:
            if right / (right + wrong) < target:
                break
            best = score
    return best


def tune(scored: list[Scored]) -> dict[str, float]:
    """Choose a threshold per task kind (and "*" over all pairs) on the given pairs.

    A kind with fewer than MIN_HITS guard-passing pairs takes the all-kinds value; one with
    enough takes its own, never below the all-kinds value. 1.0 means no safe threshold was
    found: the kind is effectively never served a semantic hit.
    """
    overall = lowest_safe_threshold(scored)
    chosen = {ALL_KINDS: overall if overall is not None else 1.0}
    for task in sorted({p.row["task"] for p in scored}):
        mine = [p for p in scored if p.row["task"] == task]
        if sum(p.guard_ok for p in mine) < MIN_HITS:
            chosen[task] = chosen[ALL_KINDS]
            continue
        value = lowest_safe_threshold(mine)
        chosen[task] = max(value if value is not None else 1.0, chosen[ALL_KINDS])
    return chosen
