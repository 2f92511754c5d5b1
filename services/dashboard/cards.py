"""The big numbers above the charts: formatted once, here, for the page and the live JSON."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

Tone = Literal["", "good", "warn", "bad"]
DASH = "—"


@dataclass(frozen=True)
class Card:
    id: str
    label: str
    value: str
    sub: str
    tone: Tone = ""


def num(value: float | None, digits: int = 0) -> str:
    """Format a count or rate with thousands separators."""
    if value is None:
        return DASH
    if digits == 0 or abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def pct(value: float | None) -> str:
    return DASH if value is None else f"{value:.1f} %"


def money(value: float | None) -> str:
    """Format US dollars, keeping small amounts (cost per task) readable."""
    if value is None:
        return DASH
    if value == 0:
        return "$0"
    if abs(value) < 0.01:
        return f"${value:.5f}".rstrip("0")
    if abs(value) >= 1000:
        return f"${value:,.0f}"
    return f"${value:,.2f}"


def ms(value: float | None) -> str:
    """Format a latency in ms or s."""
    if value is None:
        return DASH
    if value >= 10_000:
        return f"{value / 1000:.0f} s"
    if value >= 1000:
        return f"{value / 1000:.1f} s"
    return f"{value:.0f} ms"


def _tone(firing: set[str], *rules: str) -> Tone:
    return "bad" if firing.intersection(rules) else ""


def _wrong_hits(totals: Mapping[str, Any]) -> str:
    """The sampled wrong-hit rate beside the savings it puts in doubt (nothing unsampled)."""
    if not totals.get("semantic_verified"):
        return ""
    return (f" · semantic wrong hits {pct(totals['semantic_wrong_hit_pct'])} of "
            f"{num(totals['semantic_verified'])} sampled")


def _batching(totals: Mapping[str, Any]) -> str:
    return f" · batching {money(totals['saved_batching_usd'])}" \
        if "saved_batching_usd" in totals else ""


def batch_cards(batches: Mapping[str, Any], totals: Mapping[str, Any]) -> list[Card]:
    """Return the cards of deferred work: waiting and in flight, then what batches saved."""
    unpriced = f" · {num(batches['unpriced'])} unpriced" if batches["unpriced"] else ""
    monthly = totals.get("projected_monthly_batching_saving_usd", 0.0)
    return [
        Card("batches", "Batches", f"{num(batches['in_flight'])} in flight",
             f"{num(batches['deferred_waiting'])} deferred waiting"),
        Card("batch-saving", "Saved by batching", money(batches["saved_usd"]),
             f"{num(batches['results'])} batched · ≈ {money(monthly)}/month{unpriced}",
             "good" if batches["saved_usd"] > 0 else ""),
    ]


def self_hosting_cards(figures: Mapping[str, Any]) -> list[Card]:
    """Return the self-hosting answer: its monthly cost beside the API's, and the break-even."""
    if not figures["configured"]:
        return [Card("self-hosting", "Self-hosted per month", DASH, "GPU price: see Settings")]
    gpus = figures["gpus"]
    cheaper: Tone = "good" if figures["cheaper"] == "self-hosted" else ""
    even = figures["break_even_tasks_per_day"]
    return [
        Card("self-hosting", "Self-hosted per month", money(figures["self_hosted_monthly_usd"]),
             f"{num(gpus)} GPU{'' if gpus == 1 else 's'} · API "
             f"{money(figures['api_monthly_usd'])}/month", cheaper),
        Card("break-even", "Break-even tasks/day", "never" if even is None else num(even),
             "busy GPU dearer than API" if even is None
             else f"now {num(figures['tasks_per_day'])} tasks/day", cheaper),
    ]


def build_cards(doc: Mapping[str, Any]) -> list[Card]:
    """Return the overview's headline cards for a metrics document."""
    t = doc["totals"]
    lat = doc["latency_ms"]
    firing = {a["rule"] for a in doc["alerts"]}
    workers = doc["workers"]
    pools = [p["util_pct_avg"] for p in doc["limiter"].values() if p["util_pct_avg"] is not None]
    cards = [
        Card("throughput", "Throughput", f"{num(t['throughput_per_min'], 1)}/min",
             f"{num(t['tasks'])} tasks · now {num(t['throughput_now_per_min'], 1)}/min"),
        Card("error-rate", "Error rate", pct(t["error_rate_pct"]),
             f"{num(t['failed'])} failed · {num(t['dead'])} dead",
             _tone(firing, "error_rate", "dead_letters")),
        Card("latency", "Latency p95", ms(lat["total"]["p95"]),
             f"p50 {ms(lat['total']['p50'])} · p99 {ms(lat['total']['p99'])}",
             _tone(firing, "latency_p95")),
        Card("queue-wait", "Queue wait p95", ms(lat["queue"]["p95"]),
             f"LLM time p95 {ms(lat['llm']['p95'])}"),
        Card("backlog", "Backlog", num(doc["backlog"]), "ready in pipeline queues",
             _tone(firing, "queue_depth", "queue_growth")),
        Card("workers", "Workers online", num(workers["online"]),
             f"{num(workers['in_flight'])} of {num(workers['concurrency'])} slots busy",
             "warn" if workers["online"] == 0 else ""),
        Card("cost-hour", "Cost per hour", money(t["cost_per_hour_usd"]),
             f"≈ {money(t['projected_monthly_usd'])}/month at this rate",
             _tone(firing, "cost_per_hour")),
        Card("cost-task", "Cost per task", money(t["cost_per_task_usd"]),
             f"{money(t['cost_usd'])} in this window"),
        Card("savings", "Saved", money(t["saved_usd"]),
             f"cache {money(t['saved_cache_usd'])} · tiering {money(t['saved_tiering_usd'])}"
             + _batching(t) + _wrong_hits(t),
             "bad" if "semantic_wrong_hits" in firing else "good" if t["saved_usd"] > 0 else ""),
        Card("cache", "Cache hit rate", pct(t["cache_hit_rate_pct"]),
             f"exact {num(t['cache_exact'])} · semantic {num(t['cache_semantic'])}"),
        Card("limiter", "Limiter use", pct(max(pools)) if pools else DASH,
             f"429s {num(t['rate_limited_per_min'], 1)}/min", _tone(firing, "rate_limited")),
    ]
    if "batches" in doc:
        cards[-1:-1] = batch_cards(doc["batches"], t)  # beside the cache, before the limiter
    if "self_hosting" in doc:
        cards += self_hosting_cards(doc["self_hosting"])
    if "suggested_workers" in doc:
        cards.append(Card("suggested", "Suggested workers", num(doc["suggested_workers"]),
                          f"now {num(workers['online'])} online"))
    return cards


def card_dicts(doc: Mapping[str, Any]) -> list[dict[str, str]]:
    return [asdict(c) for c in build_cards(doc)]
