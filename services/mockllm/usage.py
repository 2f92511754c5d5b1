"""Bill a chat request's prompt tokens as OpenAI does, for the `usage` the provider reports.

This is OpenAI's published rule for its chat format (the tiktoken cookbook's
num_tokens_from_messages), written here apart from agentq's estimate
(services/common/tokens.py count_messages) so that `agentq bench limiter` measures that
estimate against an independent count: every field of every message as sent (a `name`,
content parts, tool calls, which the estimate does not see), in the vocabulary of the model
the request names (the real tokenizer where a package ships it offline).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from services.common.tokens import counter, tokenizer_for

# Each message is framed as <|start|>{role}<|message|>{content}<|end|> (3 tokens around its
# fields) and the reply is primed with <|start|>assistant<|message|> (3 tokens); a `name`
# costs one token more. gpt-3.5-turbo-0301 framed with 4 and a name replaced the role.
REPLY_PRIMER = 3
_FRAMING = {"gpt-3.5-turbo-0301": (4, -1)}
_DEFAULT_FRAMING = (3, 1)


def framing(model: str) -> tuple[int, int]:
    """Return (tokens per message, tokens per name) of a model's chat format."""
    name = model.lower().rpartition("/")[2]
    return next((f for prefix, f in _FRAMING.items() if name.startswith(prefix)),
                _DEFAULT_FRAMING)


def _text(key: str, value: object) -> str:
    """Return the text a field puts in front of the model: a string as it is, the text
    parts of a content list, any other structure (tool calls) as the JSON sent."""
    if isinstance(value, str):
        return value
    if key == "content" and isinstance(value, list):
        return "".join(part["text"] for part in value
                       if isinstance(part, dict) and isinstance(part.get("text"), str))
    return "" if value is None else json.dumps(value, separators=(",", ":"))


def billed_prompt_tokens(messages: Sequence[Mapping[str, object]], model: str) -> int:
    """Return the prompt tokens OpenAI's chat format bills for `messages` sent to `model`."""
    count = counter(tokenizer_for(model))
    per_message, per_name = framing(model)
    total = REPLY_PRIMER
    for message in messages:
        total += per_message
        for key, value in message.items():
            total += count(_text(key, value)) + (per_name if key == "name" else 0)
    return total
