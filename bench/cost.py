"""`agentq bench cost`: what tiering, cascades and caching save on a mixed workload.

Replays a generated workload (bench/workload.py, fixed seed) through a real stack (mockllm,
intake, router, workers as processes, over RabbitMQ and Redis), then the same tasks once more
all on premium with the cache off, and prints: cost with agentq vs all-premium vs
all-standard (baselines priced from the same token counts), exact and semantic hit rates,
escalation and success rates; semantic-cache precision and recall on the labelled pairs in
bench/data/paraphrase_pairs.jsonl; and semantic lookup p50/p99 with 100,000 entries.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from bench.lookup_timing import timed_lookups
from bench.workload import Item, generate
from services.common.cache import CachedAnswer
from services.common.cost_config import CacheConfig
from services.common.embedder import EmbedderError, LocalEmbedder, SentenceEmbedder
from services.common.guard import same_question
from services.common.models import Task, Usage
from services.common.semantic_cache import SemanticCache

ROOT = Path(__file__).resolve().parent.parent
PAIRS = ROOT / "bench" / "data" / "paraphrase_pairs.jsonl"
REDIS_URL = "redis://127.0.0.1:6379/0"
TENANTS = {"classify": "support", "extract": "finance", "summarize": "ops", "reason": "ops",
           "chat": "support"}
BATCH = 25


def price(prices: tuple[float, float], usage: dict[str, int]) -> float:
    return (usage["prompt_tokens"] * prices[0] + usage["completion_tokens"] * prices[1]) / 1e6


# -- the labelled pairs ----------------------------------------------------------------------

def pair_metrics(config: CacheConfig, embedder: LocalEmbedder | SentenceEmbedder
                 ) -> dict[str, Any]:
    """Return precision and recall of semantic matching on the labelled pairs."""
    rows = [json.loads(line) for line in PAIRS.read_text().splitlines() if line.strip()]
    outcome: Counter[str] = Counter()
    embedding_only: Counter[str] = Counter()
    misses_by_why: Counter[str] = Counter()
    false_hits = []
    for row in rows:
        va, vb = embedder.embed_now([row["a"], row["b"]])
        threshold = config.semantic_threshold(row["kind"])
        close = threshold is not None and float(va @ vb) >= threshold
        predicted = close and same_question(row["a"], row["b"]).same
        for counter, guess in ((outcome, predicted), (embedding_only, close)):
            counter[("t" if guess == row["match"] else "f") + ("p" if guess else "n")] += 1
        if row["match"] and not predicted:
            misses_by_why[row["why"]] += 1
        if predicted and not row["match"]:
            false_hits.append(f"{row['a']!r} ~ {row['b']!r}")

    def pr(c: Counter[str]) -> tuple[float, float]:
        return (c["tp"] / max(1, c["tp"] + c["fp"]), c["tp"] / max(1, c["tp"] + c["fn"]))

    return {"pairs": len(rows), "must_match": sum(r["match"] for r in rows),
            "must_not": sum(not r["match"] for r in rows), "with_guard": pr(outcome),
            "embedding_only": pr(embedding_only), "missed": dict(misses_by_why),
            "false_hits": false_hits}


# -- the lookup index at scale ---------------------------------------------------------------

def _bench_prompt(i: int, rng: np.random.Generator) -> str:
    verbs = ["cancel", "track", "return", "change", "pay", "close", "reset", "upgrade", "check"]
    nouns = ["order", "parcel", "invoice", "account", "password", "plan", "card", "address"]
    return (f"Classify: I want to {verbs[rng.integers(len(verbs))]} my "
            f"{nouns[rng.integers(len(nouns))]} number {i} from store {rng.integers(1000)}. "
            "labels: a, b, c")


async def lookup_latency(entries: int, lookups: int) -> dict[str, float]:
    """Fill one cache scope with `entries` answers in Redis, load them into a fresh index,
    and time full lookups (embed, index search, entry fetch, guard)."""
    embedder = LocalEmbedder()
    rng = np.random.default_rng(5)
    prompts = [_bench_prompt(i, rng) for i in range(entries)]
    answer = CachedAnswer(output="a", model="gpt-4o-mini", tier="cheap", usage=Usage())

    async def fill(writer: SemanticCache) -> None:
        for start in range(0, entries, 2_000):
            await writer.put_many([(Task(tenant="bench", kind="classify", prompt=p), "cheap",
                                    answer) for p in prompts[start:start + 2_000]])

    # Half near repeats of stored prompts, half new ones.
    queries = [f"Hi, {prompts[int(rng.integers(entries))]}" if j % 2 == 0
               else _bench_prompt(entries + j, rng) for j in range(lookups)]
    return await timed_lookups(embedder, embedder.embed_now, fill, queries, 0.7)


# -- the replay ------------------------------------------------------------------------------

def replay(stack: Any, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Send tasks in arrival order, BATCH at a time, and return their Results."""
    results = []
    for start in range(0, len(tasks), BATCH):
        results += stack.run(tasks[start:start + BATCH], timeout=120)
    return results


def run_workload(items: list[Item], workers: int, premium_run: bool
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    if str(ROOT) not in sys.path:  # the process-stack helpers live with the tests
        sys.path.insert(0, str(ROOT))
    from bench.cost_stack import cost_stack

    tasks = [{**item.task, "id": str(uuid.uuid4()), "tenant": TENANTS[item.kind],
              "metadata": {"n": n}} for n, item in enumerate(items)]
    premium = [{**task, "id": str(uuid.uuid4()), "tier": "premium", "cache": "off",
                "tenant": f"{task['tenant']}-premium"} for task in tasks]
    with tempfile.TemporaryDirectory() as tmp, cost_stack(Path(tmp), workers=workers) as stack:
        started = time.monotonic()
        ours = replay(stack, tasks)
        elapsed = time.monotonic() - started
        calls = stack.stats()
        baseline = replay(stack, premium) if premium_run else []
    return ours, baseline, {"elapsed_s": elapsed, "provider_calls": calls["completed"]}


def summarise(items: list[Item], ours: list[dict[str, Any]], baseline: list[dict[str, Any]],
              run: dict[str, Any]) -> dict[str, Any]:
    from bench.cost_stack import PRICES, TIER_MODELS

    n = len(ours)
    premium_prices = PRICES[TIER_MODELS["premium"][0]]
    standard_prices = PRICES[TIER_MODELS["standard"][0]]
    cost = sum(r["cost_usd"] for r in ours)
    all_premium = sum(price(premium_prices, r["usage"]) for r in ours)
    all_standard = sum(price(standard_prices, r["usage"]) for r in ours)
    intent_of = {r["task_id"]: item.intent for r, item in zip(ours, items, strict=True)}
    semantic = [(r, item) for r, item in zip(ours, items, strict=True)
                if r["cache"] == "semantic"]
    wrong = sum(1 for r, item in semantic if intent_of.get(r["cached_from"]) != item.intent)
    by_tier = Counter(r["tier"] for r in ours if r["cache"] == "miss")
    return {
        "tasks": n, "mix": Counter(item.kind for item in items), "cost": cost,
        "all_premium": all_premium, "all_standard": all_standard,
        "premium_measured": sum(r["cost_usd"] for r in baseline),
        "saved_reported": sum(r["cost_saved_usd"] for r in ours),
        "exact": sum(r["cache"] == "exact" for r in ours) / n,
        "semantic": len(semantic) / n, "semantic_hits": len(semantic),
        "semantic_wrong": wrong,
        "escalated": sum(len(r.get("calls") or []) > 1 for r in ours) / n,
        "hard": sum(bool(item.extra.get("hard")) for item in items) / n,
        "success": sum(r["status"] == "succeeded" for r in ours) / n,
        "premium_success": (sum(r["status"] == "succeeded" for r in baseline) / len(baseline)
                            if baseline else None),
        "by_tier": by_tier, **run,
    }


def report_pairs(title: str, pairs: dict[str, Any]) -> None:
    p, r = pairs["with_guard"]
    pe, re_ = pairs["embedding_only"]
    print(f"semantic matching on {pairs['pairs']} labelled pairs "
          f"({pairs['must_match']} paraphrases, {pairs['must_not']} near misses), {title}")
    print(f"  embedding + guard      precision {p:.3f}  recall {r:.3f}")
    print(f"  embedding alone        precision {pe:.3f}  recall {re_:.3f}")
    print(f"  paraphrases missed by kind of rewording: {pairs['missed']}")
    for hit in pairs["false_hits"]:
        print(f"  false hit: {hit}")


def report(s: dict[str, Any], lookup: dict[str, float] | None) -> None:
    pct = 100 * (1 - s["cost"] / s["all_premium"])
    print(f"workload: {s['tasks']} tasks, seed-fixed mix {dict(s['mix'])}")
    print(f"  replayed in {s['elapsed_s']:.1f}s, {s['provider_calls']} provider calls; "
          f"paid calls by tier {dict(s['by_tier'])}")
    print("cost")
    print(f"  agentq                 ${s['cost']:.4f}")
    print(f"  all on premium         ${s['all_premium']:.4f}   (agentq is {pct:.1f}% cheaper)")
    print(f"  all on standard        ${s['all_standard']:.4f}   "
          f"(agentq is {100 * (1 - s['cost'] / s['all_standard']):.1f}% cheaper)")
    if s["premium_measured"]:
        print(f"  premium run, measured  ${s['premium_measured']:.4f}   (same tasks, tier=premium, "
              "cache off)")
    print(f"  cost_saved_usd summed  ${s['saved_reported']:.4f}")
    print("cache")
    print(f"  exact hits             {100 * s['exact']:.1f}%")
    print(f"  semantic hits          {100 * s['semantic']:.1f}%   ({s['semantic_hits']} hits, "
          f"{s['semantic_wrong']} answered another question)")
    print(f"  escalations            {100 * s['escalated']:.1f}%   "
          f"({100 * s['hard']:.1f}% of tasks were too hard for cheap)")
    premium = ("n/a" if s["premium_success"] is None
               else f"{100 * s['premium_success']:.1f}%")
    print(f"  success rate           {100 * s['success']:.1f}%   (all-premium run: {premium})")
    target = "met" if pct >= 60 and (s["premium_success"] is None
                                     or s["success"] >= s["premium_success"]) else "NOT met"
    print(f"  target (>= 60% cheaper than all-premium, same success rate): {target}")
    if lookup:
        print(f"semantic lookup with {lookup['entries']:,.0f} entries in one scope "
              f"(index loaded from Redis in {lookup['load_s']:.1f}s)")
        print(f"  full lookup   p50 {lookup['full_50']:.2f} ms   p99 {lookup['full_99']:.2f} ms"
              f"   (embed + index + Redis fetch + guard; {100 * lookup['hit_share']:.0f}% hits)")
        print(f"  index search  p50 {lookup['index_50']:.2f} ms   p99 {lookup['index_99']:.2f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentq bench cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--entries", type=int, default=100_000,
                        help="semantic entries for the lookup timing (0 = skip)")
    parser.add_argument("--lookups", type=int, default=2_000)
    parser.add_argument("--no-premium-run", action="store_true",
                        help="skip replaying the workload on premium (success-rate baseline)")
    parser.add_argument("--sentence-model", default="",
                        help="also score the pairs with a local ONNX sentence model in DIR")
    args = parser.parse_args(argv)

    items = generate(args.tasks, args.seed)
    ours, baseline, run = run_workload(items, args.workers, not args.no_premium_run)
    summary = summarise(items, ours, baseline, run)
    lookup = asyncio.run(lookup_latency(args.entries, args.lookups)) if args.entries else None
    report(summary, lookup)
    every_kind = CacheConfig(semantic_kinds=["*"], embedder="local")  # the layer is opt-in
    report_pairs("local embedder, every kind opted in", pair_metrics(every_kind, LocalEmbedder()))
    if args.sentence_model:
        try:
            sentence = SentenceEmbedder(args.sentence_model)
        except EmbedderError as exc:
            print(f"sentence model skipped: {exc}")
        else:
            report_pairs(f"sentence model {args.sentence_model}",
                         pair_metrics(CacheConfig(semantic_kinds=["*"]), sentence))
    if summary["success"] < 1.0:
        failures = Counter((r.get("error") or {}).get("code") for r in ours
                           if r["status"] != "succeeded")
        print(f"  failures by code: {dict(failures)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
