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
    is_number,
    negations,
    number_value,
    numbers,
    stem,
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
# Words that set a request's scope, grouped by what they mean: "all invoices" is not "one
# invoice", "every container" not "the container".
_SCOPE = {
    "all": "all", "every": "all", "each": "all", "entire": "all", "whole": "all",
    "everyone": "all", "everything": "all", "everybody": "all", "except": "except",
    "besides": "except", "excluding": "except", "only": "only", "both": "both",
    "half": "half", "most": "most",
}
_IDIOMS = frozenset({"time", "times", "other"})  # "every time", "each other": not a scope
# A rate's period: "5% a year" is not "5% a month".
_PERIODS = {
    "daily": "day", "weekly": "week", "monthly": "month", "yearly": "year", "annual": "year",
    "annually": "year", "hourly": "hour", "nightly": "night", "tonight": "night",
    "today": "today", "tomorrow": "tomorrow", "yesterday": "yesterday",
}
_PERIOD_NOUNS = {"day": "day", "week": "week", "month": "month", "year": "year",
                 "hour": "hour", "night": "night", "annum": "year"}
_RATE_WORDS = frozenset({"a", "per", "each", "every", "an"})
# Unit spellings by the unit they name: "2 seconds" is "2 s", "5 days" is "5-day".
_UNIT_NAMES = {
    "s": "s", "sec": "s", "secs": "s", "second": "s", "ms": "ms", "min": "min",
    "minute": "min", "h": "h", "hr": "h", "hour": "h", "day": "d", "week": "wk",
    "month": "mo", "year": "yr", "mg": "mg", "g": "g", "gram": "g", "kg": "kg",
    "kilogram": "kg", "lb": "lb", "lbs": "lb", "pound": "lb", "oz": "oz", "ml": "ml",
    "l": "l", "litre": "l", "liter": "l", "km": "km", "kilometre": "km", "kilometer": "km",
    "m": "m", "metre": "m", "meter": "m", "mi": "mi", "mile": "mi", "ft": "ft", "feet": "ft",
    "foot": "ft", "gb": "gb", "mb": "mb", "kb": "kb", "tb": "tb", "tablet": "tablet",
    "pill": "pill", "mcg": "mcg", "iu": "iu",
}
_MONTHS_AND_DAYS = frozenset("""
january february march april may june july august september october november december
monday tuesday wednesday thursday friday saturday sunday
""".split())
# Function words of the languages a prompt is most often written in besides English: a
# question asked in French wants its answer in French.
_FOREIGN = frozenset("""
le la les des du une est et je vous pour avec dans sur mon ma mes que qui il elle ne pas
el los las del un una es y mi mis para con por que como cuanto cuando donde puedo hay se al
der die das und ich ist ein eine mit nach wie bei auf zu den dem sollte mein meine
il lo di che per con una come quanto posso mio
""".split())
_ENGLISH = frozenset("""
the a an is are was do does did to of in on for my i you your me with what how can why
which should will would this that it at be have has from and or not any
""".split())
ROLE_SHARED_BIGRAMS = 0.5  # below this share, the same words in another order swap roles


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
    has_to = "to" in words or "into" in words
    marks = (_DIRECTIONS - ({"from"} if not has_to else set())) | (
        {"to", "into"} if "from" in words else set())
    found = []
    for i, word in enumerate(words):
        if word not in marks:
            continue
        word = "to" if word == "into" else word
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


def same_names(a: str, b: str) -> bool:
    """Say whether two texts name the same things in the same order, wherever a name sits:
    a name that one text capitalises must occur in the other (any case), and names other
    than dates must come in the same order ("Mars bigger than Venus" vs "Venus ... Mars")."""
    found_a, found_b = entities(a), entities(b)
    lower_a, lower_b = " ".join(tokens(a)), " ".join(tokens(b))
    for names, other in ((found_a, lower_b), (found_b, lower_a)):
        if any(f" {' '.join(tokens(n))} " not in f" {other} " for n in names):
            return False
    both = set(found_a) & set(found_b)

    def order(found: list[str]) -> list[str]:
        return [n for n in dict.fromkeys(found) if n in both and n not in _MONTHS_AND_DAYS]
    return order(found_a) == order(found_b)


def quantities(words: list[str]) -> list[str]:
    """Return the numbers of a text with the unit that follows each: '5 mg' is not '5 g'."""
    found = []
    for i, word in enumerate(words):
        if is_number(word) or numbers([word]):
            after = words[i + 1] if i + 1 < len(words) else ""
            unit = _UNIT_NAMES.get(after, _UNIT_NAMES.get(after[:-1], "")) if after else ""
            found.append(f"{number_value(word)} {unit}".strip())
    return sorted(found)


def scope(words: list[str]) -> list[str]:
    """Return the scope and period words of a text, by meaning, sorted and deduplicated."""
    found = {_SCOPE[w] for w, after in zip(words, words[1:] + [""], strict=True)
             if w in _SCOPE and after not in _IDIOMS}
    found |= {_PERIODS[w] for w in words if w in _PERIODS}
    found |= {_PERIOD_NOUNS[stem(w)] for prev, w in zip(words, words[1:], strict=False)
              if prev in _RATE_WORDS and stem(w) in _PERIOD_NOUNS}
    return sorted(found)


def language(text: str, words: list[str]) -> str:
    """Guess whether a text is English ("en") or another language ("xx")."""
    if any(c in "¿¡ñßäöüàâçèéêëîïôûùœ" for c in text.lower()) and not any(
            w in _ENGLISH for w in words[:3]):
        return "xx"
    foreign = sum(w in _FOREIGN for w in words)
    english = sum(w in _ENGLISH for w in words)
    return "xx" if foreign > english else "en"


def roles_swapped(a: list[str], b: list[str]) -> bool:
    """Say whether two texts use the same content words with who-does-what reversed:
    "do foxes eat rabbits" / "do rabbits eat foxes" share words but no word pair in order."""
    if len(a) < 3 or Counter(a) != Counter(b) or a == b:
        return False
    pairs_a = set(zip(a, a[1:], strict=False))
    shared = sum(pair in pairs_a for pair in zip(b, b[1:], strict=False))
    return shared / (len(b) - 1) < ROLE_SHARED_BIGRAMS


def same_question(a: str, b: str, strict: bool = True) -> Verdict:
    """Say whether prompt `b` asks what prompt `a` asks, so `a`'s answer may serve it.

    `strict` (for embedders that only see words) also wants the same content words; a
    sentence model places synonyms close by itself, so without `strict` the rules check only
    what such models are known to blur: negation, quantities, names, direction, scope,
    period, language and swapped roles.
    """
    words_a, words_b = tokens(a), tokens(b)
    if negations(words_a) != negations(words_b):
        return Verdict(False, "negation")
    if numbers(words_a) != numbers(words_b) or quantities(words_a) != quantities(words_b):
        return Verdict(False, "numbers")
    if strict and entities(a) != entities(b):
        return Verdict(False, "entities")
    if not strict and not same_names(a, b):
        return Verdict(False, "entities")
    dir_a, dir_b = directions(words_a), directions(words_b)
    if dir_a != dir_b and (strict or (dir_a and dir_b)):
        return Verdict(False, "direction")
    if scope(words_a) != scope(words_b):
        return Verdict(False, "scope")
    if language(a, words_a) != language(b, words_b):
        return Verdict(False, "language")
    content_a, content_b = content_words(words_a), content_words(words_b)
    if roles_swapped(content_a, content_b):
        return Verdict(False, "roles")
    if strict:
        differing = word_difference(content_a, content_b)
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
