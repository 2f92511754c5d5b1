"""Score how hard a prompt looks, from 0 (a lookup) to 1 (long multi-step reasoning): pure."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# Each signal gives 0..1; the score is their weighted sum, capped at 1.
WEIGHTS = {"length": 0.2, "structure": 0.15, "reasoning": 0.4, "code": 0.3, "math": 0.3}
SHORT_TOKENS, LONG_TOKENS = 60, 4_000
# The text signals saturate after a few hits, so a long prompt is scored on its head and tail:
# the router's time per task stays bounded whatever a client sends.
SCORED_CHARS = 32_768
# Every pattern below runs in linear time: no unbounded repeat can restart inside a run it
# already scanned (word starts are anchored with \b, gaps are bounded).

_REASONING = re.compile(
    r"\b(step[- ]by[- ]step|prove|proof|derive|deduce|justify|explain why|why does|why do|"
    r"trade-?offs?|pros and cons|compare|contrast|analy[sz]e|evaluate|assess|plan|strategy|"
    r"design|architect|optimi[sz]e|debug|root cause|diagnose|multi-step|reason(?:ing)? about|"
    r"what would happen|consequences?|implications?|first\b.{0,200}?\bthen)\b",
    re.IGNORECASE | re.DOTALL)
_CODE = re.compile(
    r"```|\bdef \w+\(|\bclass \w+[:(]|\bfunction\s*\w*\(|\bimport \w+|#include|\breturn\b|"
    r"=>|[-+*/]=|==|!=|\bfor \w+ in\b|\bSELECT\b.{1,200}?\bFROM\b|Traceback \(most recent|"
    r"\b\w+\([\w, ]{0,200}\)\s*[:;{]|[{};]\s*\n",
    re.IGNORECASE)
_MATH = re.compile(
    r"\d\s*[-+*/^=<>]\s*\d|\\frac|\\sum|\\int|\b(integral|derivative|equation|solve for|"
    r"probability|expected value|theorem|lemma|matrix|eigen\w*|polynomial|modulo|"
    r"how many ways)\b",
    re.IGNORECASE)
_LIST_LINE = re.compile(r"^[ \t]*(?:[-*•]|\d+[.)])[ \t]+", re.MULTILINE)
_HEADING = re.compile(r"^[ \t]*(?:#+[ \t]|\w[\w ]{0,40}:[ \t]*$)", re.MULTILINE)


@dataclass(frozen=True)
class Complexity:
    score: float
    signals: tuple[str, ...]  # the signals that contributed, strongest first

    def describe(self) -> str:
        return ",".join(self.signals) or "none"


def length_signal(prompt_tokens: int) -> float:
    """Return 0 below SHORT_TOKENS, 1 from LONG_TOKENS, log-scaled in between."""
    if prompt_tokens <= SHORT_TOKENS:
        return 0.0
    return min(1.0, math.log(prompt_tokens / SHORT_TOKENS) / math.log(LONG_TOKENS / SHORT_TOKENS))


def structure_signal(text: str, messages: int) -> float:
    lists = len(_LIST_LINE.findall(text))
    questions = text.count("?")
    headings = len(_HEADING.findall(text))
    return min(1.0, 0.15 * lists + 0.2 * max(0, questions - 1) + 0.2 * headings
               + 0.1 * max(0, messages - 2))


def _hits(pattern: re.Pattern[str], text: str, per_hit: float) -> float:
    return min(1.0, per_hit * len(pattern.findall(text)))


def scored_part(text: str) -> str:
    """Return what the text signals look at: all of a prompt up to SCORED_CHARS, else its
    head and tail."""
    if len(text) <= SCORED_CHARS:
        return text
    half = SCORED_CHARS // 2
    return text[:half] + "\n" + text[-half:]


def score(text: str, prompt_tokens: int, messages: int = 1) -> Complexity:
    """Score a prompt's complexity from its length, structure, reasoning, code and math."""
    text = scored_part(text)
    signals = {
        "length": length_signal(prompt_tokens),
        "structure": structure_signal(text, messages),
        "reasoning": _hits(_REASONING, text, 0.5),
        "code": _hits(_CODE, text, 0.4),
        "math": _hits(_MATH, text, 0.5),
    }
    total = min(1.0, sum(WEIGHTS[name] * value for name, value in signals.items()))
    named = sorted((n for n, v in signals.items() if v > 0),
                   key=lambda n: -WEIGHTS[n] * signals[n])
    return Complexity(round(total, 3), tuple(named))
