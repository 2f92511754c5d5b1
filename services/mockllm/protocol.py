"""Speak OpenAI's wire format: validate request bodies and shape responses and errors.

Plain functions over plain data; the handlers in server.py call them and keep the counts.
"""

from __future__ import annotations

import base64
import json
import math
import os
import struct
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from services.common.tokens import count_text
from services.mockllm.answers import EMBEDDING_DIMENSIONS, Answer, embed
from services.mockllm.ratelimit import Decision, Quota, format_duration
from services.mockllm.usage import billed_prompt_tokens

MODELS = (
    "gpt-4o-mini",
    "gpt-4o",
    "o1",
    "claude-3-5-haiku",
    "claude-sonnet-4",
    "text-embedding-3-small",
)
DEFAULT_MAX_TOKENS = 256  # what OpenAI's limiter charges for the answer when none is set
MAX_EMBEDDING_INPUTS = 2048
MAX_CHOICES = 128  # OpenAI's bound on n
SERVER_ERROR = "The server had an error while processing your request."
OVERLOADED = "The server is overloaded or not ready yet."
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_LIMITS_URL = "Visit https://platform.openai.com/account/rate-limits to learn more."


class InvalidRequest(Exception):
    """Reject a request body; answered as 400 in OpenAI's error shape."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """Hold the parts of a chat completion request the provider uses."""

    model: str
    messages: list[dict[str, str]]
    max_tokens: int | None
    n: int
    prompt_tokens: int

    @property
    def limiter_cost(self) -> int:
        """Return the tokens the limiter charges: the prompt plus the most the answer may use."""
        return self.prompt_tokens + (self.max_tokens or DEFAULT_MAX_TOKENS) * self.n


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    """Hold the parts of an embeddings request the provider uses."""

    model: str
    inputs: list[str]
    dimensions: int
    encoding_format: str


def parse_chat(document: object) -> ChatRequest:
    """Validate a chat completion body."""
    body = _require_object(document)
    model = _require_model(body)
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest("'messages' must be a non-empty array.", "messages")
    messages = [_parse_message(item, f"messages[{index}]") for index, item in enumerate(raw)]
    if body.get("stream"):
        raise InvalidRequest("The simulated provider does not support streaming.", "stream")
    max_tokens = _optional_int(body, "max_completion_tokens")
    if max_tokens is None:
        max_tokens = _optional_int(body, "max_tokens")
    n = _optional_int(body, "n") or 1
    if n > MAX_CHOICES:
        raise InvalidRequest(f"'n' must be at most {MAX_CHOICES}.", "n", "invalid_value")
    # Billed from the messages as sent (every field), in the named model's vocabulary.
    return ChatRequest(model, messages, max_tokens, n, billed_prompt_tokens(raw, model))


def parse_embeddings(document: object) -> EmbeddingRequest:
    """Validate an embeddings body."""
    body = _require_object(document)
    model = _require_model(body)
    raw = body.get("input")
    inputs = [raw] if isinstance(raw, str) else raw
    if not isinstance(inputs, list) or not inputs or len(inputs) > MAX_EMBEDDING_INPUTS:
        message = f"'input' must be a string or an array of 1 to {MAX_EMBEDDING_INPUTS} strings."
        raise InvalidRequest(message, "input")
    if not all(isinstance(text, str) and text for text in inputs):
        raise InvalidRequest("'input' may only hold non-empty strings.", "input")
    dimensions = _optional_int(body, "dimensions") or EMBEDDING_DIMENSIONS
    if dimensions > EMBEDDING_DIMENSIONS:
        message = f"'dimensions' must be at most {EMBEDDING_DIMENSIONS}."
        raise InvalidRequest(message, "dimensions")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise InvalidRequest("'encoding_format' must be 'float' or 'base64'.", "encoding_format")
    return EmbeddingRequest(model, inputs, dimensions, encoding)


def _require_object(body: object) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


def _require_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("You must provide a model parameter.", "model")
    return model


def _parse_message(item: object, param: str) -> dict[str, str]:
    if not isinstance(item, dict):
        raise InvalidRequest(f"Invalid type for '{param}': expected an object.", param)
    role = item.get("role")
    if role not in _ROLES:
        message = f"Invalid value for '{param}.role': {role!r}. Supported: {sorted(_ROLES)}."
        raise InvalidRequest(message, f"{param}.role", "invalid_value")
    content = item.get("content")
    if content is None and role in ("assistant", "function"):
        return {"role": role, "content": ""}  # a tool-calling turn carries no text
    return {"role": role, "content": _content_text(content, f"{param}.content")}


def _content_text(content: object, param: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        # Content parts: the text parts are what the model reads (images are ignored here).
        texts = [part.get("text") for part in content if isinstance(part, dict)]
        if len(texts) == len(content) and all(isinstance(t, str | None) for t in texts):
            return "".join(text for text in texts if text)
    message = f"Invalid type for '{param}': expected a string or an array of content parts."
    raise InvalidRequest(message, param, "invalid_type")


def _optional_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        message = f"Invalid '{name}': expected an integer of at least 1, got {value!r}."
        raise InvalidRequest(message, name, "invalid_value")
    return value


def error_response(
    status: int,
    message: str,
    error_type: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """Return an error in OpenAI's JSON shape."""
    error = {"message": message, "type": error_type, "param": param, "code": code}
    return web.json_response({"error": error}, status=status, headers=headers)


def invalid_request(exc: InvalidRequest) -> web.Response:
    """Return a 400 for a rejected body."""
    return error_response(400, exc.message, "invalid_request_error", param=exc.param, code=exc.code)


def from_validation(exc: ValidationError) -> InvalidRequest:
    """Turn a pydantic error about a body into an InvalidRequest naming its first problem."""
    first = exc.errors()[0]
    param = ".".join(str(part) for part in first["loc"]) or None
    message = f"{param}: {first['msg']}" if param else first["msg"]
    return InvalidRequest(message, param, "invalid_value")


def auth_error(request: web.Request) -> web.Response | None:
    """Refuse a malformed Authorization header; a missing one is let through."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, key = header.partition(" ")
    if scheme.lower() == "bearer" and key.strip():
        return None
    message = "You didn't provide an API key. Use an Authorization header with Bearer auth."
    return error_response(401, message, "invalid_request_error", code="invalid_api_key")


async def read_json(request: web.Request) -> object:
    """Return the parsed JSON body, or raise InvalidRequest."""
    try:
        return json.loads(await request.read())
    except ValueError:
        raise InvalidRequest("We could not parse the JSON body of your request.") from None


def recorded(request: web.Request, document: object) -> dict[str, Any]:
    """Return what GET /_agentq/last-request shows of a request: its credentials hidden."""
    headers = {name.lower(): value for name, value in request.headers.items()}
    if "authorization" in headers:
        headers["authorization"] = "<redacted>"
    return {"method": request.method, "path": request.path, "query": dict(request.query),
            "headers": headers, "body": document}


def ratelimit_headers(requests: Quota | None, tokens: Quota | None) -> dict[str, str]:
    """Return OpenAI's x-ratelimit-* headers for the limits that are on."""
    headers: dict[str, str] = {}
    for kind, quota in (("requests", requests), ("tokens", tokens)):
        if quota is not None:
            headers[f"x-ratelimit-limit-{kind}"] = str(quota.limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(quota.remaining)
            headers[f"x-ratelimit-reset-{kind}"] = format_duration(quota.reset)
    return headers


def retry_headers(seconds: float) -> dict[str, str]:
    """Return retry-after (whole seconds, rounded up) and retry-after-ms."""
    if math.isinf(seconds):
        return {"x-should-retry": "false"}  # the request can never fit; retrying is futile
    return {
        "retry-after": str(math.ceil(round(seconds, 6))),
        "retry-after-ms": str(math.ceil(round(seconds * 1000, 3))),
    }


def rate_limited(chat: ChatRequest, decision: Decision, headers: dict[str, str]) -> web.Response:
    """Return the 429 the real API sends when a limit is exhausted."""
    kind = decision.exceeded or "requests"
    quota = decision.tokens if kind == "tokens" else decision.requests
    requested = chat.limiter_cost if kind == "tokens" else 1
    per_min = "tokens per min (TPM)" if kind == "tokens" else "requests per min (RPM)"
    where = f"{chat.model} in organization org-mockllm on {per_min}"
    limit = quota.limit if quota is not None else 0
    if math.isinf(decision.retry_after):
        message = (
            f"Request too large for {where}: Limit {limit}, Requested {requested}. "
            f"The input or output tokens must be reduced in order to run successfully."
        )
    else:
        used = quota.used if quota is not None else 0
        message = (
            f"Rate limit reached for {where}: Limit {limit}, Used {used}, "
            f"Requested {requested}. Please try again in {format_duration(decision.retry_after)}."
        )
    headers.update(retry_headers(decision.retry_after))
    return error_response(
        429, f"{message} {_LIMITS_URL}", kind, code="rate_limit_exceeded", headers=headers
    )


def completion_body(chat: ChatRequest, reply: Answer, completion_tokens: int) -> dict[str, Any]:
    """Return a chat.completion object."""
    message = {"role": "assistant", "content": reply.text, "refusal": None}
    choices = [
        {"index": index, "message": message, "logprobs": None, "finish_reason": reply.finish_reason}
        for index in range(chat.n)
    ]
    usage = {
        "prompt_tokens": chat.prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": chat.prompt_tokens + completion_tokens,
    }
    return {
        "id": "chatcmpl-" + os.urandom(12).hex(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": chat.model,
        "choices": choices,
        "usage": usage,
        "system_fingerprint": "fp_mockllm",
    }


def embeddings_body(req: EmbeddingRequest) -> dict[str, Any]:
    """Return the list object answering an embeddings request."""
    as_base64 = req.encoding_format == "base64"
    data = []
    for index, text in enumerate(req.inputs):
        vector = embed(text, req.dimensions)
        encoded = _encode(vector) if as_base64 else vector
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    tokens = sum(count_text(text) for text in req.inputs)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return {"object": "list", "data": data, "model": req.model, "usage": usage}


def _encode(vector: list[float]) -> str:
    # OpenAI's base64 format: little-endian float32, which the SDK decodes by default.
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def model_object(model: str) -> dict[str, Any]:
    """Return a model object as GET /v1/models lists it."""
    return {"id": model, "object": "model", "created": 1_700_000_000, "owned_by": "agentq"}
