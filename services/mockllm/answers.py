"""Generate the simulated provider's answers: deterministic, plausible, and cheap to compute.

The same conversation and model always give the same text, so caches, retries and
benchmarks can be checked exactly. Embeddings are hashed bags of words and character
trigrams, so texts that share words and spellings lie closer than unrelated ones.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from services.common.tokens import count_text

NOT_SURE = "I am not sure."
HARD_MARKER = "[hard]"
EMBEDDING_DIMENSIONS = 256

# Anywhere on a line, so "Choose one of the labels: a, b" counts as well.
_LABELS = re.compile(r"\blabels\s*:(.*)$", re.IGNORECASE | re.MULTILINE)
_LABEL_TRIM = " \t'\"`[](){}."
_JSON = re.compile(r"\bjson\b", re.IGNORECASE)
# Whole name parts only, so that "gemini" is not taken for a "mini" model.
_CHEAP = re.compile(r"(?:^|[-_.:/ ])(?:mini|haiku|cheap)(?=$|[-_.:/ ])", re.IGNORECASE)
_WORD = re.compile(r"\w+")
_SENTENCE_WORDS = 12

Message = Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Answer:
    """Hold a completion's text and why it stopped."""

    text: str
    finish_reason: Literal["stop", "length"]


def answer(messages: Sequence[Message], model: str, max_tokens: int | None = None) -> Answer:
    """Answer a conversation, cut to `max_tokens` tokens like the real API."""
    text = compose(messages, model)
    if max_tokens is not None and count_text(text, model) > max_tokens:
        return Answer(truncate(text, max_tokens, model), "length")
    return Answer(text, "stop")


def compose(messages: Sequence[Message], model: str) -> str:
    """Return the full answer: a label, a JSON object or a short sentence."""
    if is_cheap(model) and any(HARD_MARKER in m.get("content", "") for m in messages):
        return NOT_SURE  # lets cascade tests see a cheap tier give up and escalate
    tag = _digest(messages, model)[:8]
    prompt = last_user_content(messages)
    labels = parse_labels(prompt)
    label = labels[int(tag, 16) % len(labels)] if labels else None
    if _JSON.search(prompt):
        return json.dumps({"answer": label or f"Answer {tag}", "model": model})
    if label is not None:
        return label
    words = " ".join(prompt.split()[:_SENTENCE_WORDS])
    return f"Answer {tag} from {model}: {words}" if words else f"Answer {tag} from {model}."


def is_cheap(model: str) -> bool:
    """Say whether a model name marks a cheap tier (…-mini, …-haiku, cheap-…)."""
    return _CHEAP.search(model) is not None


def last_user_content(messages: Sequence[Message]) -> str:
    """Return the last user message, or the last message when no user spoke."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return message.get("content", "")
    return messages[-1].get("content", "") if messages else ""


def parse_labels(prompt: str) -> list[str]:
    """Return the labels of the last `labels: a, b, c` line, or an empty list."""
    lines = _LABELS.findall(prompt)
    if not lines:
        return []
    labels = (part.strip(_LABEL_TRIM) for part in lines[-1].split(","))
    return [label for label in labels if label]


def truncate(text: str, max_tokens: int, model: str | None = None) -> str:
    """Return the longest prefix of `text` that fits in `max_tokens` tokens (in `model`'s
    vocabulary, the one its usage is counted in)."""
    # A BPE count hardly ever decreases as a prefix grows, so the cut point can be
    # bisected; the few merges that break that rule are stepped back over at the end.
    low, high = 0, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if count_text(text[:middle], model) <= max_tokens:
            low = middle
        else:
            high = middle - 1
    cut = text[:low].rstrip()
    while cut and count_text(cut, model) > max_tokens:
        cut = cut[:-1].rstrip()
    return cut


def embed(text: str, dimensions: int = EMBEDDING_DIMENSIONS) -> list[float]:
    """Return a deterministic unit vector for `text`."""
    normal = " ".join(text.lower().split())
    vector = [0.0] * dimensions
    for feature, weight in _features(normal):
        code = zlib.crc32(feature.encode())  # stable across processes, unlike hash()
        vector[code % dimensions] += weight if code & 0x8000_0000 else -weight
    norm = math.sqrt(sum(value * value for value in vector))
    if norm == 0.0:
        # Whitespace alone has no features; it still gets a valid unit vector.
        vector[zlib.crc32(text.encode()) % dimensions] = 1.0
        return vector
    return [value / norm for value in vector]


def _features(normal: str) -> Iterator[tuple[str, float]]:
    for word in _WORD.findall(normal):
        yield "w:" + word, 1.0
    padded = f" {normal} "
    for start in range(len(padded) - 2):
        yield "t:" + padded[start : start + 3], 0.5


def _digest(messages: Sequence[Message], model: str) -> str:
    # Case of roles and runs of whitespace do not change the meaning, so not the answer.
    normal = [
        [m.get("role", "").strip().lower(), " ".join(m.get("content", "").split())]
        for m in messages
    ]
    payload = json.dumps([model, normal], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()
