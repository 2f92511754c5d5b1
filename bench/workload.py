"""Generate the mixed workload of `agentq bench cost`, reproducibly from a seed.

Proportions follow what an agent system for customer operations sends: half of it
classification of incoming messages (popular intents come back again and again, word for word
or reworded), a fifth extraction, summaries of unique documents, and a tenth multi-step
reasoning; a few general chat requests of mixed difficulty go by complexity.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

MIX = {"classify": 0.50, "extract": 0.20, "summarize": 0.15, "reason": 0.10, "chat": 0.05}
LABELS = ["refund", "delivery", "account", "billing", "cancel", "other"]
HARD_SHARE = 0.08  # classifications the cheap tier cannot do (they escalate)
EXTRACT_SCHEMA = {"type": "object", "required": ["answer"],
                  "properties": {"answer": {"type": "string"}}}

INTENTS = [
    "I want to cancel my order", "where is my package", "I was charged twice for my order",
    "the item arrived broken", "I want a refund for my shoes", "how do I reset my password",
    "I cannot log in to my account", "please update my billing address",
    "my discount code does not work", "the delivery is late", "close my account",
    "I did not receive a confirmation email", "change the delivery address for my order",
    "the app keeps crashing", "I want to return a jacket", "my invoice is wrong",
    "unsubscribe me from the newsletter", "the courier left my parcel at the wrong house",
    "I want to upgrade my plan", "when will my refund arrive", "my card was declined",
    "the product is missing a part", "how long does shipping take", "I ordered the wrong size",
    "can I pay by bank transfer", "my account was locked", "cancel my subscription",
    "the tracking link does not work", "I want to speak to a manager",
    "the package was stolen from my porch",
]
# Rewordings agents actually produce: greetings, politeness, punctuation, case, typos.
_WRAPS = ["{m}", "Hi, {m}.", "Hello, {m}, thanks!", "please, {m}", "{m}!!", "{M}",
          "Hey team, {m}?", "{m}. Thank you", "Hi there. {m}", "Good morning, {m}"]
_TYPOS = {"package": "pakage", "account": "acount", "receive": "recieve", "address": "adress",
          "refund": "refnud", "delivery": "delivary", "password": "pasword"}
_SENTENCES = [
    "Revenue grew in the third quarter while costs stayed flat.",
    "The team shipped the new onboarding flow and saw fewer support tickets.",
    "Two customers reported latency spikes during the evening peak.",
    "The warehouse move is planned for next month and needs a freeze on changes.",
    "Marketing asked for a summary of churn reasons by segment.",
    "Legal reviewed the supplier contract and flagged the liability clause.",
    "The mobile app rating dropped after the last release.",
    "Finance wants the budget for the next two quarters by Friday.",
    "Most refunds this week came from one faulty batch of headphones.",
    "The partner integration is blocked on an expired API key.",
]
_REASONING = [
    "Plan step by step how to cut our support backlog of {n} tickets in half within 4 weeks, "
    "compare three options and explain the trade-offs of each.",
    "A customer ordered {n} items at $12 each with a 15% discount and $7 shipping; two were "
    "returned. Derive step by step what we must refund and prove the total is right.",
    "Analyze why delivery times rose {n}% last month given these facts: a new carrier, a "
    "warehouse move and a holiday. Evaluate each cause and plan what to check first.",
    "Design a fair escalation policy for {n} agents across three time zones; reason about "
    "the consequences for response time and justify the rules.",
]
_CHAT = [
    "What are your opening hours on {d}?",
    "Write a python function def total(xs): that returns sum(x * 2 for x in xs) and fix: "
    "for i in range({n}): total += i",
    "Give me three name ideas for a newsletter about {d} deliveries.",
    "Compare plan A and plan B step by step and explain why one costs {n}% more.",
]
_DAYS = ["Monday", "Tuesday", "Saturday", "Sunday", "public holidays"]


@dataclass
class Item:
    """One task of the workload and what the benchmark knows about it."""

    task: dict[str, Any]
    kind: str
    intent: str = ""  # the question it asks: equal intents have the same right answer
    variant: str = "unique"  # repeat | reworded | unique
    extra: dict[str, Any] = field(default_factory=dict)


def _reword(message: str, rng: random.Random) -> str:
    wrap = rng.choice(_WRAPS[1:])
    text = wrap.format(m=message, M=message.upper())
    if rng.random() < 0.3:
        for right, wrong in _TYPOS.items():
            if right in text:
                return text.replace(right, wrong, 1)
    return text


def _classify(rng: random.Random, seen: set[str]) -> Item:
    # Popularity follows a Zipf-like curve: a few intents make most of the traffic.
    intent = INTENTS[min(int(rng.paretovariate(1.2)) - 1, len(INTENTS) - 1)]
    if rng.random() < 0.2:  # about one specific order: a message never seen before
        message = intent = f"{intent} (order {rng.randint(10_000, 99_999)})"
        variant = "unique"
    elif intent not in seen:
        message, variant = intent, "first"
    elif rng.random() < 0.5:
        message, variant = intent, "repeat"
    else:
        message, variant = _reword(intent, rng), "reworded"
    seen.add(intent)
    hard = rng.random() < HARD_SHARE
    prompt = (f"{'[hard] ' if hard else ''}Classify the customer message.\n"
              f"Message: {message}\nlabels: {', '.join(LABELS)}")
    task = {"kind": "classify", "prompt": prompt, "validator": {"labels": LABELS}}
    # A [hard] task is another question to the simulated provider: its own intent.
    return Item(task, "classify", f"[hard] {intent}" if hard else intent, variant,
                {"hard": hard})


def _extract(rng: random.Random, invoices: list[str]) -> Item:
    if invoices and rng.random() < 0.25:  # the same document processed again
        text, variant = rng.choice(invoices), "repeat"
    else:
        text = (f"Invoice {rng.randint(1000, 9999)} from supplier {rng.randint(1, 400)}: "
                f"{rng.randint(1, 40)} units at ${rng.randint(5, 500)}.{rng.randint(0, 99):02d}, "
                f"due {rng.choice(_DAYS)}.")
        invoices.append(text)
        variant = "unique"
    task = {"kind": "extract", "prompt": f"Extract the invoice number and total as JSON: {text}",
            "validator": {"json_schema": EXTRACT_SCHEMA}}
    return Item(task, "extract", text, variant)


def _summarize(rng: random.Random) -> Item:
    body = " ".join(rng.choice(_SENTENCES) for _ in range(rng.randint(6, 20)))
    text = f"Summarise this weekly update for the leadership team:\n{body}"
    return Item({"kind": "summarize", "prompt": text}, "summarize", text)


def _reason(rng: random.Random) -> Item:
    text = rng.choice(_REASONING).format(n=rng.randint(3, 400))
    return Item({"kind": "reason", "prompt": text, "max_tokens": 400}, "reason", text)


def _chat(rng: random.Random) -> Item:
    text = rng.choice(_CHAT).format(n=rng.randint(2, 90), d=rng.choice(_DAYS))
    return Item({"kind": "chat", "prompt": text}, "chat", text)


def generate(count: int, seed: int = 7) -> list[Item]:
    """Return `count` tasks in arrival order."""
    rng = random.Random(seed)
    seen: set[str] = set()
    invoices: list[str] = []
    kinds, weights = zip(*MIX.items(), strict=True)
    items = []
    for _ in range(count):
        kind = rng.choices(kinds, weights)[0]
        if kind == "classify":
            items.append(_classify(rng, seen))
        elif kind == "extract":
            items.append(_extract(rng, invoices))
        elif kind == "summarize":
            items.append(_summarize(rng))
        elif kind == "reason":
            items.append(_reason(rng))
        else:
            items.append(_chat(rng))
    return items
