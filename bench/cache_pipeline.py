"""The semantic cache through the running pipeline, on test-half pairs (`agentq bench cache
--pipeline N`).

Starts a real stack (mockllm, intake, router, a worker; RabbitMQ and Redis) whose tier table
opts every kind in, sends each pair's first prompt, then its second, each pair in a cache
scope of its own (so only its own first prompt can answer it), and counts the second prompts
answered from the semantic cache: right when the pair is labelled `same`.
"""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path
from typing import Any

from bench.semantic_eval import load_pairs

BATCH = 50


def config(threshold: float | None) -> str:
    """Return the [cache] section: every kind opted in, tuned or flat thresholds."""
    lines = ["[cache]", 'semantic_kinds = ["*"]', "verify_share = 0.0"]
    if threshold is not None:
        lines += ["[cache.semantic_thresholds]"] + [
            f"{kind} = {threshold}" for kind in ("classify", "extract", "summarize", "chat")]
    return "\n".join(lines) + "\n"


def sample(pairs: int) -> list[dict[str, Any]]:
    """Return every k-th test pair, so the sample keeps the mix of kinds and domains."""
    rows = load_pairs("test")
    step = max(1, len(rows) // pairs)
    return rows[::step][:pairs]


def measure(pairs: int, threshold: float | None) -> dict[str, Any]:
    from bench.cost_stack import cost_stack

    rows = sample(pairs)
    tag = uuid.uuid4().hex[:6]
    firsts, seconds = [], []
    for n, row in enumerate(rows):
        # One tenant (a tenant per pair would mean hundreds of lanes); a system message of
        # its own gives each pair its own cache scope instead.
        base = {"kind": row["task"], "tenant": f"pairs-{tag}"}
        context = {"role": "system", "content": f"Case {n}."}
        firsts.append({**base, "messages": [context, {"role": "user", "content": row["a"]}]})
        seconds.append({**base, "messages": [context, {"role": "user", "content": row["b"]}]})
    with tempfile.TemporaryDirectory() as tmp, \
            cost_stack(Path(tmp), extra=config(threshold)) as stack:
        for start in range(0, len(firsts), BATCH):
            stack.run(firsts[start:start + BATCH], timeout=180)
        answered = []
        for start in range(0, len(seconds), BATCH):
            answered += stack.run(seconds[start:start + BATCH], timeout=180)
    hits = [row for row, result in zip(rows, answered, strict=True)
            if result["cache"] == "semantic"]
    wrong = sum(row["label"] != "same" for row in hits)
    same = sum(row["label"] == "same" for row in rows)
    return {"pairs": len(rows), "same": same, "hits": len(hits), "wrong": wrong,
            "precision": (len(hits) - wrong) / len(hits) if hits else 1.0,
            "recall": (len(hits) - wrong) / same if same else 0.0,
            "lost": sum(r["status"] != "succeeded" for r in answered)}


def report(figures: dict[str, Any], threshold: float | None) -> None:
    label = "tuned thresholds" if threshold is None else f"flat threshold {threshold}"
    print(f"through the running pipeline ({label}, every kind opted in, default embedder): "
          f"{figures['pairs']} test pairs ({figures['same']} same)")
    print(f"  precision {figures['precision']:.3f}  recall {figures['recall']:.3f}  "
          f"wrong hits {figures['wrong']} of {figures['hits']}  "
          f"tasks not succeeded {figures['lost']}")
