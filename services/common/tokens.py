"""Count tokens offline, close to what OpenAI's BPE tokenizers report.

The simulated provider reports `usage` with this count and the limiter estimates with it,
so both sides of a test agree exactly. Real providers report their own usage, which the
limiter settles against afterwards; the estimate only needs to be close.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

# Words split into pieces of about four letters, as BPE vocabularies do for common text;
# numbers in groups of three digits (cl100k's rule); each other symbol is one token.
_PIECE = re.compile(r"[A-Za-z]+|\d{1,3}|[^\sA-Za-z\d]")
_PER_MESSAGE_OVERHEAD = 3  # OpenAI's chat format: <|start|>{role}\n ... <|end|>
_REPLY_PRIMER = 3


def count_text(text: str) -> int:
    """Count the tokens of a plain string."""
    total = 0
    for piece in _PIECE.findall(text):
        total += (len(piece) + 3) // 4 if piece[0].isalpha() else 1
    return total


def count_messages(messages: Iterable[Mapping[str, str]]) -> int:
    """Count the prompt tokens of a chat request, as the provider bills them."""
    total = _REPLY_PRIMER
    for message in messages:
        total += _PER_MESSAGE_OVERHEAD + count_text(str(message.get("content") or ""))
        total += count_text(str(message.get("role") or ""))
    return total
