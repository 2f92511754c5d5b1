"""Serve the simulated OpenAI-compatible provider over HTTP.

A chat request goes through: authenticate, validate, failures ordered by /control,
rate limit, random failure (error_rate), simulated latency, answer. The answer text
comes from answers.py, the limiter arithmetic from ratelimit.py, the wire format from
protocol.py and the run-time state from state.py; this module routes and keeps counts.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from aiohttp import web
from pydantic import ValidationError

from services.common.tokens import count_text
from services.mockllm import batch_routes
from services.mockllm.answers import answer
from services.mockllm.protocol import (
    MODELS,
    OVERLOADED,
    SERVER_ERROR,
    ChatRequest,
    InvalidRequest,
    auth_error,
    completion_body,
    embeddings_body,
    error_response,
    from_validation,
    invalid_request,
    model_object,
    parse_chat,
    parse_embeddings,
    rate_limited,
    ratelimit_headers,
    read_json,
    recorded,
    retry_headers,
)
from services.mockllm.ratelimit import format_duration
from services.mockllm.settings import TUNABLE, ControlUpdate, FailNext, MockSettings
from services.mockllm.state import STATE, Counters, MockState, Stats

log = logging.getLogger("agentq.mockllm")


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
        document = await read_json(request)
        state.last_request = recorded(request, document)
        chat = parse_chat(document)
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
    completion_tokens = count_text(reply.text, model=chat.model) * chat.n
    billed = Counters(
        completed=1, prompt_tokens=chat.prompt_tokens, completion_tokens=completion_tokens
    )
    state.stats.record(chat.model, billed)
    return web.json_response(completion_body(chat, reply, completion_tokens), headers=headers)


async def embeddings(request: web.Request) -> web.Response:
    """Answer POST /v1/embeddings."""
    state = request.app[STATE]
    state.stats.embeddings += 1
    if (refused := auth_error(request)) is not None:
        return refused
    try:
        document = await read_json(request)
        state.last_request = recorded(request, document)
        req = parse_embeddings(document)
    except InvalidRequest as exc:
        return invalid_request(exc)
    return web.json_response(embeddings_body(req))


async def retrieve_model(request: web.Request) -> web.Response:
    """Answer GET /v1/models/{model}."""
    model = request.match_info["model"]
    if model not in MODELS:
        message = f"The model `{model}` does not exist or you do not have access to it."
        return error_response(404, message, "invalid_request_error", code="model_not_found")
    return web.json_response(model_object(model))


async def last_request(request: web.Request) -> web.Response:
    """Answer GET /_agentq/last-request: the last chat or embeddings request (404 if none)."""
    seen = request.app[STATE].last_request
    if seen is None:
        return error_response(404, "No request has arrived yet.", "invalid_request_error")
    return web.json_response(seen)


async def list_models(request: web.Request) -> web.Response:
    """Answer GET /v1/models."""
    request.app[STATE].last_request = recorded(request, None)
    return web.json_response({"object": "list", "data": [model_object(m) for m in MODELS]})


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
            return invalid_request(from_validation(exc))
        state.apply(update)
    return web.json_response(state.control_json())


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
            web.get("/_agentq/last-request", last_request),
            *batch_routes.ROUTES,
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
    parser.add_argument("--batch-completion-s", type=float, help="seconds a batch takes to end")
    parser.add_argument("--batch-error-rate", type=float, help="share of batch lines that fail")
    parser.add_argument(
        "--batch-expire", action="store_true", default=None, help="batches end expired"
    )
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
