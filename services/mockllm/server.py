"""Serve the simulated OpenAI-compatible provider over HTTP.

A chat request goes through: authenticate, validate, failures ordered by /control,
rate limit, random failure (error_rate), simulated latency, answer. The answer text
comes from answers.py and the limiter arithmetic from ratelimit.py; this module only
speaks HTTP and keeps counts.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import math
import os
import random
import struct
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from services.common.tokens import count_messages, count_text
from services.mockllm.answers import EMBEDDING_DIMENSIONS, Answer, answer, embed
from services.mockllm.ratelimit import Decision, Quota, RateLimiter, format_duration
from services.mockllm.settings import TUNABLE, ControlUpdate, FailNext, MockSettings

log = logging.getLogger("agentq.mockllm")

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


@dataclass(slots=True)
class Counters:
    """Count chat outcomes and billed tokens."""

    requests: int = 0
    completed: int = 0
    rate_limited: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, other: Counters) -> None:
        """Add another set of counts to this one."""
        self.requests += other.requests
        self.completed += other.completed
        self.rate_limited += other.rate_limited
        self.errors += other.errors
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens


@dataclass(slots=True)
class Stats:
    """Count what the provider did, in total and per model."""

    total: Counters = field(default_factory=Counters)
    by_model: dict[str, Counters] = field(default_factory=dict)
    in_flight: int = 0
    embeddings: int = 0

    def model(self, name: str) -> Counters:
        """Return the counters of one model, creating them on first use."""
        counters = self.by_model.get(name)
        if counters is None:
            counters = self.by_model[name] = Counters()
        return counters

    def record(self, model: str | None, outcome: Counters) -> None:
        """Add an outcome to the totals and, when the model is known, to its counters."""
        self.total.add(outcome)
        if model is not None:
            self.model(model).add(outcome)

    def to_json(self) -> dict[str, Any]:
        """Return the GET /stats document."""
        by_model = {name: asdict(counters) for name, counters in self.by_model.items()}
        return {
            **asdict(self.total),
            "in_flight": self.in_flight,
            "embeddings": self.embeddings,
            "by_model": by_model,
        }


@dataclass(slots=True)
class MockState:
    """Hold everything a running provider changes: settings, limiter, randomness, counts."""

    settings: MockSettings
    limiter: RateLimiter
    rng: random.Random
    stats: Stats = field(default_factory=Stats)
    fail_next: FailNext = field(default_factory=lambda: FailNext(count=0))
    clock: Callable[[], float] = time.monotonic

    @classmethod
    def create(cls, settings: MockSettings) -> MockState:
        """Build the state a fresh server starts with."""
        limiter = RateLimiter(settings.rpm, settings.tpm, time.monotonic())
        return cls(settings=settings, limiter=limiter, rng=random.Random(settings.seed))

    def apply(self, update: ControlUpdate) -> None:
        """Apply a POST /control update."""
        changes = update.setting_changes()
        self.settings = self.settings.model_copy(update=changes)
        if "rpm" in changes or "tpm" in changes:
            # A changed limit starts with its full allowance, as a new OpenAI tier does.
            self.limiter = RateLimiter(self.settings.rpm, self.settings.tpm, self.clock())
        if "seed" in changes:
            self.rng.seed(self.settings.seed)
        if update.fail_next is not None:
            self.fail_next = update.fail_next

    def take_forced_failure(self) -> FailNext | None:
        """Use up one of the failures ordered by /control, if any are left."""
        if self.fail_next.count <= 0:
            return None
        self.fail_next = self.fail_next.model_copy(update={"count": self.fail_next.count - 1})
        return self.fail_next

    def control_json(self) -> dict[str, Any]:
        """Return the /control document: current settings and pending failures."""
        return {**self.settings.model_dump(), "fail_next": self.fail_next.model_dump()}


STATE = web.AppKey("mockllm_state", MockState)


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
    return ChatRequest(model, messages, max_tokens, n, count_messages(messages))


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


def forced_failure(state: MockState, chat: ChatRequest, failure: FailNext) -> web.Response:
    """Return the failure ordered by /control fail_next."""
    headers = ratelimit_headers(*state.limiter.peek(state.clock()))
    if failure.status == 500:
        state.stats.record(chat.model, Counters(errors=1))
        return error_response(500, SERVER_ERROR, "server_error", headers=headers)
    headers.update(retry_headers(failure.retry_after))
    if failure.status == 503:
        state.stats.record(chat.model, Counters(errors=1))
        return error_response(503, OVERLOADED, "server_error", headers=headers)
    state.stats.record(chat.model, Counters(rate_limited=1))
    wait = format_duration(failure.retry_after)
    message = f"Rate limit reached for {chat.model} (simulated). Please try again in {wait}."
    return error_response(429, message, "requests", code="rate_limit_exceeded", headers=headers)


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


async def chat_completions(request: web.Request) -> web.Response:
    """Answer POST /v1/chat/completions."""
    state = request.app[STATE]
    state.stats.total.requests += 1
    state.stats.in_flight += 1
    try:
        return await _complete(state, request)
    finally:
        state.stats.in_flight -= 1


async def _complete(state: MockState, request: web.Request) -> web.Response:
    if (refused := auth_error(request)) is not None:
        state.stats.record(None, Counters(errors=1))
        return refused
    try:
        chat = parse_chat(await read_json(request))
    except InvalidRequest as exc:
        state.stats.record(None, Counters(errors=1))
        return invalid_request(exc)
    state.stats.model(chat.model).requests += 1
    if (failure := state.take_forced_failure()) is not None:
        return forced_failure(state, chat, failure)
    decision = state.limiter.acquire(chat.limiter_cost, state.clock())
    headers = ratelimit_headers(decision.requests, decision.tokens)
    if not decision.allowed:
        state.stats.record(chat.model, Counters(rate_limited=1))
        return rate_limited(chat, decision, headers)
    settings = state.settings
    if settings.error_rate and state.rng.random() < settings.error_rate:
        state.stats.record(chat.model, Counters(errors=1))
        return error_response(500, SERVER_ERROR, "server_error", headers=headers)
    if settings.latency_ms or settings.jitter_ms:
        delay_ms = state.rng.gauss(settings.latency_ms, settings.jitter_ms)
        await asyncio.sleep(max(0.0, delay_ms) / 1000)
    reply = answer(chat.messages, chat.model, chat.max_tokens)
    completion_tokens = count_text(reply.text) * chat.n
    billed = Counters(
        completed=1, prompt_tokens=chat.prompt_tokens, completion_tokens=completion_tokens
    )
    state.stats.record(chat.model, billed)
    return web.json_response(completion_body(chat, reply, completion_tokens), headers=headers)


async def embeddings(request: web.Request) -> web.Response:
    """Answer POST /v1/embeddings."""
    request.app[STATE].stats.embeddings += 1
    if (refused := auth_error(request)) is not None:
        return refused
    try:
        req = parse_embeddings(await read_json(request))
    except InvalidRequest as exc:
        return invalid_request(exc)
    as_base64 = req.encoding_format == "base64"
    data = []
    for index, text in enumerate(req.inputs):
        vector = embed(text, req.dimensions)
        encoded = _encode(vector) if as_base64 else vector
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    tokens = sum(count_text(text) for text in req.inputs)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return web.json_response({"object": "list", "data": data, "model": req.model, "usage": usage})


def _encode(vector: list[float]) -> str:
    # OpenAI's base64 format: little-endian float32, which the SDK decodes by default.
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def _model_object(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": 1_700_000_000, "owned_by": "agentq"}


async def list_models(request: web.Request) -> web.Response:
    """Answer GET /v1/models."""
    return web.json_response({"object": "list", "data": [_model_object(m) for m in MODELS]})


async def retrieve_model(request: web.Request) -> web.Response:
    """Answer GET /v1/models/{model}."""
    model = request.match_info["model"]
    if model not in MODELS:
        message = f"The model `{model}` does not exist or you do not have access to it."
        return error_response(404, message, "invalid_request_error", code="model_not_found")
    return web.json_response(_model_object(model))


async def get_stats(request: web.Request) -> web.Response:
    """Answer GET /stats."""
    return web.json_response(request.app[STATE].stats.to_json())


async def reset_stats(request: web.Request) -> web.Response:
    """Answer POST /stats/reset: zero the counts and return them."""
    state = request.app[STATE]
    # Requests still running will finish and decrement in_flight, so it carries over.
    state.stats = Stats(in_flight=state.stats.in_flight)
    return web.json_response(state.stats.to_json())


async def control(request: web.Request) -> web.Response:
    """Answer GET and POST /control: read or change behaviour at run time."""
    state = request.app[STATE]
    if request.method == "POST":
        try:
            update = ControlUpdate.model_validate_json(await request.read())
        except ValidationError as exc:
            return invalid_request(_from_validation(exc))
        state.apply(update)
    return web.json_response(state.control_json())


def _from_validation(exc: ValidationError) -> InvalidRequest:
    first = exc.errors()[0]
    param = ".".join(str(part) for part in first["loc"]) or None
    message = f"{param}: {first['msg']}" if param else first["msg"]
    return InvalidRequest(message, param, "invalid_value")


async def healthz(request: web.Request) -> web.Response:
    """Answer GET /healthz."""
    return web.json_response({"status": "ok"})


def create_app(settings: MockSettings) -> web.Application:
    """Build the simulated provider's web application."""
    app = web.Application(client_max_size=32 * 1024 * 1024)  # long prompts are legitimate
    app[STATE] = MockState.create(settings)
    app.add_routes(
        [
            web.post("/v1/chat/completions", chat_completions),
            web.post("/v1/embeddings", embeddings),
            web.get("/v1/models", list_models),
            web.get("/v1/models/{model}", retrieve_model),
            web.get("/stats", get_stats),
            web.post("/stats/reset", reset_stats),
            web.get("/control", control),
            web.post("/control", control),
            web.get("/healthz", healthz),
        ]
    )
    return app


def parse_settings(argv: list[str] | None = None) -> MockSettings:
    """Build settings from AGENTQ_MOCK_* variables, overridden by command-line flags."""
    parser = argparse.ArgumentParser(
        prog="agentq mockllm", description="Run the OpenAI-compatible simulated provider."
    )
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--rpm", type=int, help="requests per minute, 0 = unlimited")
    parser.add_argument("--tpm", type=int, help="tokens per minute, 0 = unlimited")
    parser.add_argument("--latency-ms", type=float, help="mean simulated latency")
    parser.add_argument("--jitter-ms", type=float, help="standard deviation of the latency")
    parser.add_argument("--error-rate", type=float, help="share of requests answered with 500")
    parser.add_argument("--seed", type=int, help="seed of the simulated randomness")
    args = parser.parse_args(argv)
    flags = {name: value for name, value in vars(args).items() if value is not None}
    try:
        return MockSettings(**flags)
    except ValidationError as exc:
        parser.error(str(exc))  # exits with status 2, like any other bad flag


def main(argv: list[str] | None = None) -> int:
    """Run the simulated provider until SIGINT or SIGTERM."""
    settings = parse_settings(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    shown = ", ".join(f"{name}={getattr(settings, name)}" for name in TUNABLE)
    log.info("mockllm on http://%s:%d (%s)", settings.host, settings.port, shown)
    # run_app turns SIGTERM and SIGINT into a graceful shutdown that lets requests finish.
    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        access_log=None,
        print=None,
        backlog=1024,
        shutdown_timeout=5.0,
    )
    log.info("mockllm stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
