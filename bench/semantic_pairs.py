"""Write the labelled semantic-cache pairs: bench/data/semantic_pairs/{train,test}.jsonl.

Each intent (bench/semantic_intents_*.py) is one source question with hand-written surface
forms that ask the same thing, slots filled from pools, and hand-written near misses: a
changed negation, scope, intent or language. Pairs are drawn from each intent with a seed of
its own: paraphrases (two forms, same slots), slot changes (numbers and units, dates, names),
swapped roles (from/to, who does what to whom) and the near misses. The split is by intent:
an intent's pairs all go to train or all to test, so no source question is in both halves.

    python -m bench.semantic_pairs          # rewrites the two files (deterministic)
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
import string
from collections import Counter
from pathlib import Path
from typing import Any

from bench.semantic_intents_a import INTENTS as INTENTS_A
from bench.semantic_intents_b import INTENTS as INTENTS_B

OUT = Path(__file__).resolve().parent / "data" / "semantic_pairs"
SEED = 15
SLOT = re.compile(r"\{(\w+)\}")

# Slot pools: (near-miss kind when the value changes, values).
POOLS: dict[str, tuple[str, list[str]]] = {
    "order": ("numbers", ["48213", "50917", "33402", "71286", "62045", "19873"]),
    "amount": ("numbers", ["$20", "$200", "$49.99", "$59.99", "$1,250", "$12.50"]),
    "count": ("numbers", ["2", "3", "5", "10", "12", "40"]),
    "percent": ("numbers", ["5%", "15%", "20%", "2.5%", "50%"]),
    "dose": ("numbers", ["5 mg", "50 mg", "500 mg", "10 ml", "2 tablets", "1 g"]),
    "size": ("numbers", ["2 GB", "8 GB", "16 GB", "512 MB", "200 MB"]),
    "weight": ("numbers", ["2 kg", "20 kg", "5 lb", "500 g", "12 kg"]),
    "length": ("numbers", ["3 km", "30 km", "5 miles", "800 m", "12 miles"]),
    "date": ("dates", ["March 3", "March 4", "June 12", "June 21", "October 1", "May 15"]),
    "day": ("dates", ["Monday", "Tuesday", "Friday", "Sunday", "Wednesday"]),
    "year": ("dates", ["2019", "2021", "2023", "2024", "1998"]),
    "city": ("entities", ["Paris", "London", "Berlin", "Madrid", "Tokyo", "Chicago", "Lisbon"]),
    "person": ("entities", ["Alice Moreau", "Ben Carter", "Priya Shah", "Tom Lee",
                            "Maria Gonzalez", "Kenji Sato"]),
    "company": ("entities", ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay"]),
    "device": ("entities", ["iPhone 15", "Galaxy S24", "Pixel 8", "ThinkPad X1", "MacBook Air"]),
    "plang": ("entities", ["Python", "Rust", "Java", "Go", "TypeScript", "Kotlin"]),
    "drug": ("entities", ["ibuprofen", "paracetamol", "amoxicillin", "metformin",
                          "lisinopril"]),
    "country": ("entities", ["France", "Germany", "Japan", "Canada", "Brazil", "India"]),
    "service": ("entities", ["Postgres", "Redis", "Kafka", "Nginx", "Elasticsearch"]),
    "account": ("entities", ["savings", "checking", "brokerage", "credit card"]),
}


def fill(form: str, values: dict[str, str]) -> str:
    return SLOT.sub(lambda m: values[m.group(1)], form)


def pool_of(slot: str) -> str:
    """Return the pool a slot draws from: `city2` and `src_city` draw from `city`."""
    name = slot.rstrip(string.digits)
    return name.split("_", 1)[1] if "_" in name else name


def fillings(slots: list[str], rng: random.Random, n: int) -> list[dict[str, str]]:
    """Return n slot fillings; slots of one pool get distinct values."""
    out = []
    for _ in range(n):
        values: dict[str, str] = {}
        for slot in slots:
            taken = {v for s, v in values.items() if pool_of(s) == pool_of(slot)}
            values[slot] = rng.choice([v for v in POOLS[pool_of(slot)][1] if v not in taken])
        out.append(values)
    return out


def surface(text: str, rng: random.Random) -> str:
    """Reword how a prompt sounds, not what it asks: case, greeting, punctuation."""
    text = rng.choice([str.lower, lambda t: t, lambda t: t[0].lower() + t[1:]])(text)
    return rng.choice(["hi, ", "Hello! ", "hey team - ", ""]) + text.rstrip("?.!") + \
        rng.choice([" thanks", "?", " - thank you!", ".", " pls"])


def pairs_of(intent: dict[str, Any], rng: random.Random) -> list[dict[str, Any]]:
    """Draw the labelled pairs of one intent."""
    forms: list[str] = intent["forms"]
    slots = sorted({s for f in forms for s in SLOT.findall(f)})
    fills = fillings(slots, rng, 4)
    out: list[tuple[str, str, str, str]] = []
    for values in fills:  # a fifth pair per filling would repeat forms too often
        combos = list(itertools.combinations(range(len(forms)), 2))
        for i, j in rng.sample(combos, min(4, len(combos))):
            out.append((fill(forms[i], values), fill(forms[j], values), "same", "paraphrase"))
    base = fills[0]
    first = fill(rng.choice(forms), base)
    out.append((first, surface(first, rng), "same", "paraphrase-surface"))
    for slot in slots:
        if slot.startswith(("src_", "dst_")):
            continue
        kind, values = POOLS[pool_of(slot)]
        for _ in range(3):
            changed = dict(base, **{slot: rng.choice([v for v in values if v != base[slot]])})
            i, j = rng.randrange(len(forms)), rng.randrange(len(forms))
            out.append((fill(forms[i], base), fill(forms[j], changed), "different", kind))
    if any(s.startswith("src_") for s in slots):
        swapped = dict(base)
        for slot in slots:
            if slot.startswith("src_"):
                dst = "dst_" + slot[4:]
                swapped[slot], swapped[dst] = base[dst], base[slot]
        for _ in range(2):
            i, j = rng.randrange(len(forms)), rng.randrange(len(forms))
            out.append((fill(forms[i], base), fill(forms[j], swapped), "different", "direction"))
    for field, kind in (("negated", "negation"), ("scope", "scope"), ("twins", "intent"),
                        ("roles", "direction"), ("lang", "language")):
        for other in intent.get(field, [])[:3]:
            for values in fills[:2]:  # two fillings: the near miss reads differently each time
                out.append((fill(rng.choice(forms), values), fill(other, values), "different",
                            kind))
    rows = []
    seen = set()
    for a, b, label, kind in out:
        if a == b or (a, b) in seen:
            continue
        seen.add((a, b))
        a, b = (a, b) if rng.random() < 0.5 else (b, a)
        rows.append({"a": a, "b": b, "label": label, "kind": kind, "domain": intent["domain"],
                     "task": intent["task"], "group": intent["id"]})
    return rows


def test_groups(intents: list[dict[str, Any]]) -> set[str]:
    """Pick the test half: in each domain, every other intent in the order of a seeded hash of
    its id, so both halves span every domain and the split never depends on file order."""
    def rank(intent: dict[str, Any]) -> bytes:
        return hashlib.sha256(f"{SEED}:{intent['id']}".encode()).digest()

    chosen, turn = set(), 0
    for domain in sorted({i["domain"] for i in intents}):
        for intent in sorted((i for i in intents if i["domain"] == domain), key=rank):
            if turn % 2:
                chosen.add(intent["id"])
            turn += 1  # carried over domains, so odd-sized domains even out
    return chosen


def build() -> dict[str, list[dict[str, Any]]]:
    halves: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    intents = INTENTS_A + INTENTS_B
    ids = [i["id"] for i in intents]
    assert len(ids) == len(set(ids)), "intent ids must be unique"
    test = test_groups(intents)
    for intent in intents:
        rng = random.Random(f"{SEED}:{intent['id']}")
        halves["test" if intent["id"] in test else "train"] += pairs_of(intent, rng)
    return halves


def main() -> int:
    halves = build()
    OUT.mkdir(parents=True, exist_ok=True)
    for name, rows in halves.items():
        with (OUT / f"{name}.jsonl").open("w") as out:
            for row in rows:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"{name}: {len(rows)} pairs, {len({r['group'] for r in rows})} intents, "
              f"{len({r['domain'] for r in rows})} domains, "
              f"labels {dict(Counter(r['label'] for r in rows))}")
        print(f"  kinds {dict(Counter(r['kind'] for r in rows))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
