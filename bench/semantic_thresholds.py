"""Choose the semantic cache's per-kind thresholds on the TRAIN half, for precision >= 0.98.

For each embedder it can load, embeds the train pairs, finds per task kind the lowest
cosine at which guarded hits stay at or above the target precision (bench/semantic_eval.py),
prints them with the train figures, and writes bench/data/semantic_pairs/thresholds.json.
The defaults in services/common/cost_config.py (TUNED_THRESHOLDS) are copied from that file
and a test keeps them equal.

    python -m bench.semantic_thresholds
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import numpy as np

from bench.semantic_eval import PAIRS_DIR, TARGET_PRECISION, embed_pairs, load_pairs, outcome, tune
from services.common.embedder import EmbedderError, LocalEmbedder, MiniLMEmbedder

OUT = PAIRS_DIR / "thresholds.json"


def embedders() -> dict[str, tuple[Callable[[Sequence[str]], np.ndarray], bool]]:
    """Return the embedders to tune: name -> (embed_now, strict guard)."""
    found: dict[str, tuple[Callable[[Sequence[str]], np.ndarray], bool]] = {
        "local": (LocalEmbedder().embed_now, True)}
    try:
        found["minilm"] = (MiniLMEmbedder(threads=2).embed_now, False)
    except EmbedderError as exc:
        print(f"minilm skipped: {exc}")
    return found


def main(argv: list[str] | None = None) -> int:
    rows = load_pairs("train")
    tuned: dict[str, dict[str, float]] = {}
    for name, (embed_now, strict) in embedders().items():
        scored, _ = embed_pairs(embed_now, rows, strict)
        tuned[name] = tune(scored)
        got = outcome(scored, lambda task, t=tuned[name]: t.get(task, t["*"]))
        print(f"{name}: thresholds {tuned[name]}")
        print(f"  train: precision {got.precision:.3f} recall {got.recall:.3f} "
              f"({got.hits} hits, {got.wrong} wrong; target precision {TARGET_PRECISION})")
    OUT.write_text(json.dumps(tuned, indent=2, sort_keys=True) + "\n")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
