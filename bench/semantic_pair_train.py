"""Fit the semantic cache's pair check on the TRAIN half only, and write its weights.

The pairs it learns from are the ones a lookup would ask it about: guard-passing train pairs
whose MiniLM cosine is at least FLOOR. Folds are whole source questions (an intent's pairs
never sit on both sides), so the cross-validated figures say how it does on questions it
has not seen. The regularisation and the probability cutoff (precision >= 0.98, from the
out-of-fold scores) are chosen there; the final model is fitted on every train pair. The
test half is never read. Deterministic: the same train file gives the same weights.

    python -m bench.semantic_pair_train [--out services/common/pair_check_weights.json]
"""

from __future__ import annotations

import argparse
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.semantic_eval import TARGET_PRECISION, load_pairs, safe_cutoff
from services.common.embedder import MiniLMEmbedder
from services.common.guard import same_question
from services.common.pair_check import FEATURES, WEIGHTS, CheckWeights, pair_features

FLOOR = 0.70  # below it on train, paraphrases are too few to be worth a model run each
FOLDS = 5
PENALTIES = (0.1, 1.0, 10.0, 100.0)
BATCH = 32


@dataclass(frozen=True)
class TrainSet:
    features: np.ndarray
    same: np.ndarray
    groups: list[str]
    all_same: int  # every "same" train pair, asked or not: recall's denominator


def fit_logistic(x: np.ndarray, y: np.ndarray, penalty: float
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Fit an L2-penalised logistic regression by Newton steps on standardised features;
    return (mean, scale, coef, bias)."""
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    design = np.c_[(x - mean) / scale, np.ones(len(x))]
    ridge = penalty * np.eye(design.shape[1])
    ridge[-1, -1] = 0.0  # the bias is not penalised
    theta = np.zeros(design.shape[1])
    for _ in range(100):
        p = 1 / (1 + np.exp(-design @ theta))
        gradient = design.T @ (p - y) + ridge @ theta
        hessian = (design * (p * (1 - p))[:, None]).T @ design + ridge
        step = np.linalg.solve(hessian, gradient)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    return mean, scale, theta[:-1], float(theta[-1])


def fold_of(groups: list[str]) -> np.ndarray:
    """Assign whole source questions to folds, by a stable hash of their names."""
    ordered = sorted(set(groups), key=lambda g: hashlib.sha256(g.encode()).hexdigest())
    fold = {group: i % FOLDS for i, group in enumerate(ordered)}
    return np.array([fold[g] for g in groups])


def out_of_fold(data: TrainSet, penalty: float) -> np.ndarray:
    """Return each pair's probability from a model that never saw its source question."""
    folds = fold_of(data.groups)
    scores = np.zeros(len(data.same))
    for k in range(FOLDS):
        train, held = folds != k, folds == k
        mean, scale, coef, bias = fit_logistic(data.features[train], data.same[train], penalty)
        scores[held] = 1 / (1 + np.exp(-(((data.features[held] - mean) / scale) @ coef + bias)))
    return scores


def cv_figures(data: TrainSet, scores: np.ndarray) -> tuple[float | None, float, float]:
    """Return (cutoff for the target precision, precision, recall) on out-of-fold scores."""
    cutoff = safe_cutoff(zip(scores.tolist(), data.same.astype(bool).tolist(), strict=True))
    if cutoff is None:
        return None, 1.0, 0.0
    hits = scores >= cutoff
    right = int((hits & (data.same == 1)).sum())
    return cutoff, right / max(1, int(hits.sum())), right / data.all_same


def train_set(model: MiniLMEmbedder) -> TrainSet:
    rows = load_pairs("train")
    texts = sorted({t for row in rows for t in (row["a"], row["b"])})
    tokens = {}
    for start in range(0, len(texts), BATCH):
        chunk = texts[start:start + BATCH]
        tokens.update(zip(chunk, model.tokens_now(chunk), strict=True))
    features, same, groups = [], [], []
    for row in rows:
        f = pair_features(row["a"], row["b"], tokens[row["a"]], tokens[row["b"]])
        if f[0] >= FLOOR and same_question(row["a"], row["b"], strict=False).same:
            features.append(f)
            same.append(float(row["label"] == "same"))
            groups.append(row["group"])
    return TrainSet(np.array(features), np.array(same), groups,
                    sum(row["label"] == "same" for row in rows))


def train(model: MiniLMEmbedder, verbose: bool = True) -> CheckWeights:
    """Choose the penalty and cutoff by cross-validation, fit on all, return the weights."""
    data = train_set(model)
    best: tuple[float, float, float, float] | None = None  # recall, penalty, cutoff, precision
    for penalty in PENALTIES:
        cutoff, precision, recall = cv_figures(data, out_of_fold(data, penalty))
        if verbose:
            print(f"  penalty {penalty:>6}: cross-validated cutoff {cutoff}, precision "
                  f"{precision:.3f}, recall {recall:.3f} (of all {data.all_same} same pairs)")
        if cutoff is not None and (best is None or recall > best[0]):
            best = (recall, penalty, cutoff, precision)
    if best is None:
        raise SystemExit(f"no penalty reaches precision {TARGET_PRECISION} out of fold")
    recall, penalty, cutoff, precision = best
    mean, scale, coef, bias = fit_logistic(data.features, data.same, penalty)

    def rounded(values: np.ndarray) -> list[float]:
        return [round(float(v), 6) for v in values]
    return CheckWeights(
        features=list(FEATURES), mean=rounded(mean), scale=rounded(scale), coef=rounded(coef),
        bias=round(bias, 6), cutoff=round(cutoff, 6), floor=FLOOR,
        trained_on=(f"train half: {len(data.same)} guard-passing pairs at cosine >= {FLOOR}, "
                    f"{len(set(data.groups))} source questions; penalty {penalty}; "
                    f"{FOLDS}-fold by source question: precision {precision:.3f}, "
                    f"recall {recall:.3f}"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.semantic_pair_train",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    args = parser.parse_args(argv)
    weights = train(MiniLMEmbedder(threads=2))
    args.out.write_text(weights.model_dump_json(indent=2) + "\n")
    print(f"{weights.trained_on}\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
