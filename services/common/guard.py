"""Decide whether a semantically close cached prompt asks the same question: pure.

Embeddings put "cancel my order" next to "don't cancel my order" and "refund $20" next to
"refund $200". A semantic hit is only served when, besides being close, the two prompts have
the same negations, the same numbers, the same names and codes in the same order, the same
direction ("from A to B"), and the same content words (up to stemming, word order, politeness
and small typos). Recall is traded for precision: a synonym is a different word here.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass

from services.common.wording import (
    FILLER,
    STOPWORDS,
    content_words,
    negations,
    numbers,
    tokens,
)

# Names and codes: capitalised words inside a clause (not after its opening punctuation,
# where "Hi, Classify ..." capitalises ordinary words), ALL-CAPS, words with digits, emails
# and URLs.
_ENTITY = re.compile(
    r"(?<![.!?:;,\n]\s)(?<![\n\"'(\[])(?<!^)\b[A-Z][a-z]+(?:\s+[A-Z][a-z]+)*\b|"
    r"\b[A-Z]{2,}\b|\b\w*\d\w*\b|\S+@\S+|https?://\S+")
MIN_TYPO_LENGTH = 5
_DIRECTIONS = frozenset({"from", "than", "versus", "vs"})


@dataclass(frozen=True)
class Verdict:
    same: bool
    reason: str  # "same", or what differs: negation, numbers, entities, direction, words:<w>


def entities(text: str) -> list[str]:
    """Return the names and codes of a text in order: "100 USD to EUR" is not "EUR to USD"."""
    letters = [c for c in text if c.isalpha()]
    if sum(c.isupper() for c in letters) > len(letters) / 2:
        text = text.lower()  # shouted text: its capitals say nothing about names
    found = (m.group(0).lower() for m in _ENTITY.finditer(text.strip()))
    # A capitalised "Where" or "Please" opening a quoted message is not a name.
    return [e for e in found if e and not e.isdigit() and e not in STOPWORDS and e not in FILLER]


def _typo(a: str, b: str) -> bool:
    """Say whether two words differ by one inserted, deleted or swapped letter (no swaps of
    one letter for another: 'loan' and 'lean' are different words, 'recieve' is a typo)."""
    if min(len(a), len(b)) < MIN_TYPO_LENGTH or a == b:
        return a == b
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return (len(diff) == 2 and diff[1] == diff[0] + 1
                and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    if abs(len(a) - len(b)) != 1:
        return False
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    return any(long_[:i] + long_[i + 1:] == short for i in range(len(long_)))


def directions(words: list[str]) -> list[tuple[str, str]]:
    """Return (preposition, next content word) pairs that give a request its direction:
    "from savings to checking" is not "from checking to savings"."""
    marks = _DIRECTIONS | ({"to", "into"} if "from" in words else set())
    found = []
    for i, word in enumerate(words):
        if word not in marks:
            continue
        for j in range(i + 1, min(i + 4, len(words))):
            if content_words([words[j]]):
                # "than plan b": a one-letter or numbered name belongs to the word before it
                tail = words[j + 1] if j + 1 < len(words) else ""
                named = len(tail) == 1 or tail[:1].isdigit()
                found.append((word, f"{words[j]} {tail}" if named else words[j]))
                break
    return sorted(found)


def word_difference(a: list[str], b: list[str]) -> list[str]:
    """Return the content words one side has and the other lacks, typos paired off."""
    only_a = list((Counter(a) - Counter(b)).elements())
    only_b = list((Counter(b) - Counter(a)).elements())
    for word in list(only_a):
        match = next((other for other in only_b if _typo(word, other)), None)
        if match is not None:
            only_a.remove(word)
            only_b.remove(match)
    return sorted(set(only_a) | set(only_b))


def same_question(a: str, b: str) -> Verdict:
    """Say whether prompt `b` asks what prompt `a` asks, so `a`'s answer may serve it."""
    words_a, words_b = tokens(a), tokens(b)
    if negations(words_a) != negations(words_b):
        return Verdict(False, "negation")
    if numbers(words_a) != numbers(words_b):
        return Verdict(False, "numbers")
    if entities(a) != entities(b):
        return Verdict(False, "entities")
    if directions(words_a) != directions(words_b):
        return Verdict(False, "direction")
    differing = word_difference(content_words(words_a), content_words(words_b))
    if differing:
        return Verdict(False, "words:" + ",".join(differing[:4]))
    return Verdict(True, "same")


def answers_agree(a: str, b: str) -> bool:
    """Say whether two answers say the same: equal JSON values, else equal normalised text."""
    try:
        return bool(json.loads(a) == json.loads(b))
    except ValueError:
        pass
    return " ".join(a.lower().split()).strip(" .!'\"") == " ".join(b.lower().split()).strip(
        " .!'\"")
