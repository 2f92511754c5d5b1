"""Provider errors name the provider, model and base URL, in the provider's own words; the
timeout in force is the provider's own when the tier table sets it."""

from __future__ import annotations

import logging
from typing import Any

import openai
import openai._exceptions as sdk_exceptions
import pytest

from services.common.config import AgentqConfig, ProviderConfig
from services.common.config_check import check_providers
from services.worker.provider import (
    ProviderRateLimited,
    ProviderRejected,
    Providers,
    ProviderTimeout,
    ProviderUnavailable,
    Where,
    effective_timeout_s,
    translate,
)
from tests.test_config_check import closed_port_url

# openai 1.x is built on httpx, 3.x on httpx2: use whichever the installed SDK is.
http = getattr(sdk_exceptions, "httpx2", None) or sdk_exceptions.httpx
WHERE = Where("groq", "llama-3.1-8b", "https://api.groq.example/v1", 30.0)
URL = f"{WHERE.base_url}/chat/completions"


def _status(status: int, body: Any, cls: type[openai.APIStatusError],
            headers: dict[str, str] | None = None) -> openai.APIStatusError:
    request = http.Request("POST", URL)
    response = http.Response(status, request=request, json=body, headers=headers or {})
    return cls(f"Error code: {status} - {body}", response=response, body=body)


@pytest.mark.parametrize(("exc", "kind", "text"), [
    (_status(401, {"error": {"message": "Incorrect API key provided"}},
             openai.AuthenticationError), ProviderRejected, "HTTP 401: Incorrect API key provided"),
    (_status(400, {"message": "model not found"}, openai.BadRequestError), ProviderRejected,
     "HTTP 400: model not found"),
    (_status(503, None, openai.InternalServerError), ProviderUnavailable,
     "HTTP 503: Service Unavailable"),
    (_status(429, {"error": {"message": "Rate limit reached"}}, openai.RateLimitError,
             {"retry-after": "2"}), ProviderRateLimited, "HTTP 429: Rate limit reached"),
])
def test_status_errors_name_where_and_say_it_once(exc: openai.OpenAIError,
                                                   kind: type[Exception], text: str) -> None:
    error = translate(exc, WHERE)
    assert isinstance(error, kind)
    message = str(error)
    assert message == (f"provider 'groq', model 'llama-3.1-8b' at "
                       f"https://api.groq.example/v1: {text}")
    assert "Error code" not in message


def test_a_429_keeps_its_headers_for_the_limiter() -> None:
    exc = _status(429, {}, openai.RateLimitError, {"retry-after": "2"})
    assert translate(exc, WHERE).headers["retry-after"] == "2"


def test_a_timeout_names_where_and_how_long() -> None:
    error = translate(openai.APITimeoutError(http.Request("POST", URL)), WHERE)
    assert isinstance(error, ProviderTimeout)
    assert str(error) == ("provider 'groq', model 'llama-3.1-8b' at "
                          "https://api.groq.example/v1: no answer within 30 s")


def test_a_connection_failure_names_where() -> None:
    error = translate(openai.APIConnectionError(request=http.Request("POST", URL)), WHERE)
    assert isinstance(error, ProviderUnavailable)
    assert str(error).startswith("provider 'groq', model 'llama-3.1-8b' at "
                                 "https://api.groq.example/v1: connection failed")


def test_the_providers_own_timeout_wins_when_set() -> None:
    assert effective_timeout_s(ProviderConfig(base_url="x", timeout_s=600), 120.0) == 600.0
    assert effective_timeout_s(ProviderConfig(base_url="x", timeout_s=10), 120.0) == 10.0
    assert effective_timeout_s(ProviderConfig(base_url="x"), 45.0) == 45.0  # not set


def test_an_unset_api_key_env_is_said_once_at_start_up(caplog: pytest.LogCaptureFixture,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTQ_TEST_UNSET_KEY", raising=False)
    config = AgentqConfig.model_validate({
        "providers": {"groq": {"base_url": closed_port_url(),
                               "api_key_env": "AGENTQ_TEST_UNSET_KEY"}},
        "tiers": {tier: {"models": [{"provider": "groq", "model": "m", "input_per_mtok": 0,
                                     "output_per_mtok": 0}]}
                  for tier in ("cheap", "standard", "premium")}})
    with caplog.at_level(logging.WARNING):
        lines = check_providers(config)  # what the worker logs first, line by line
        Providers(config, 120.0)
    assert [line for line in lines if "AGENTQ_TEST_UNSET_KEY" in line] == [
        "warning: provider 'groq': AGENTQ_TEST_UNSET_KEY is not set (api_key_env): its calls "
        "go without a key"]
    assert [r.getMessage() for r in caplog.records] == []  # the clients do not say it again
