"""Split a prompt into the words that carry its meaning: shared by the embedder and the guard."""

from __future__ import annotations

import re

_CONTRACTIONS = (
    (re.compile(r"\bcan't\b|\bcannot\b"), "can not"), (re.compile(r"\bwon't\b"), "will not"),
    (re.compile(r"\bshan't\b"), "shall not"), (re.compile(r"n't\b"), " not"),
    (re.compile(r"'re\b"), " are"), (re.compile(r"'ve\b"), " have"),
    (re.compile(r"'ll\b"), " will"), (re.compile(r"'d\b"), " would"),
    (re.compile(r"'m\b"), " am"), (re.compile(r"(\w)'s\b"), r"\1 is"),
)
# Money, percentages, decimals and thousands separators stay one token.
_TOKEN = re.compile(r"[$€£]?\d[\d,]*(?:\.\d+)?%?|[a-z][a-z0-9]*(?:'[a-z0-9]+)*")

STOPWORDS = frozenset("""
a an the and or but if then so of to in on at by for from with about as into onto over
under up down out off is am are was were be been being do does did doing have has had having
i me my mine myself you your yours we us our they them their he him his she her it its this
that these those there here what which who whom whose when where how why can could would
should will shall may might must also just any some all each every such than too very s t
whether again once further only own same other both more most few nor yet still even ever
one because get gets got getting
""".split())
NEGATIONS = frozenset("""
not no never none nothing nobody nowhere neither nor without cannot dont doesnt didnt isnt
wasnt arent werent wont cant couldnt shouldnt wouldnt hasnt havent hadnt
""".split())
# Words that change how a request sounds, not what it asks.
FILLER = frozenset("""
please pls plz kindly thanks thank thx hi hello hey dear sir madam team help me want wanted
need needs like would could possible possibly maybe perhaps hoping hope quick quickly
question ask asking wondering tell let know just really actually basically simply
""".split())
_NUMBER_WORDS = {
    "zero": "0", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12",
    "fifteen": "15", "twenty": "20", "thirty": "30", "forty": "40", "fifty": "50",
    "hundred": "100", "thousand": "1000", "million": "1000000",
}


def normalise(text: str) -> str:
    """Lower-case, expand contractions (so negations are words) and collapse whitespace."""
    lowered = text.lower().replace("’", "'")
    for pattern, replacement in _CONTRACTIONS:
        lowered = pattern.sub(replacement, lowered)
    return " ".join(lowered.split())


def tokens(text: str) -> list[str]:
    """Return the words and numbers of a normalised text, in order."""
    return _TOKEN.findall(normalise(text))


def is_number(token: str) -> bool:
    return token[0].isdigit() or token[0] in "$€£"


def number_value(token: str) -> str:
    """Return a canonical form of a number token: '$1,000.00' → '$1000'."""
    core = token.replace(",", "")
    if "." in core:
        core = core.rstrip("0").rstrip(".") if not core.endswith("%") else core
    return _NUMBER_WORDS.get(core, core)


def stem(word: str) -> str:
    """Strip common English suffixes, so 'orders', 'ordered' and 'ordering' agree."""
    if len(word) <= 4 or not word.isalpha():
        return word
    for suffix, keep in (("ies", "y"), ("ing", ""), ("ed", ""), ("es", ""), ("s", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            if suffix == "s" and word.endswith("ss"):
                return word
            if suffix == "es" and not word.endswith(("sses", "xes", "ches", "shes", "zes")):
                continue
            return word[: len(word) - len(suffix)] + keep
    return word


def content_words(words: list[str]) -> list[str]:
    """Return the stemmed words that are neither stopwords, filler, negations nor numbers."""
    return [stem(w) for w in words
            if w not in STOPWORDS and w not in FILLER and w not in NEGATIONS
            and w not in _NUMBER_WORDS and not is_number(w)]


def numbers(words: list[str]) -> list[str]:
    """Return the numbers of a text (digits or number words), canonical and sorted."""
    return sorted(number_value(w) for w in words if is_number(w) or w in _NUMBER_WORDS)


def negations(words: list[str]) -> int:
    return sum(1 for w in words if w in NEGATIONS)
