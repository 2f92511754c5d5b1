"""Provider quirks are configuration: extra headers and query parameters, no temperature,
`max_completion_tokens`; checked on what the real simulated provider received."""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from services.common import config_check
from services.common.config import AgentqConfig, ModelEntry, ProviderConfig
from services.common.models import Task
from services.worker.provider import Providers, call_options
from tests.mock_server import last_request, running_mockllm

ROOT = Path(__file__).resolve().parents[1]


def table(url: str, quirks: dict[str, Any], premium: dict[str, Any] | None = None) -> AgentqConfig:
    def entry(model: str, **extra: Any) -> dict[str, Any]:
        return {"models": [{"provider": "p", "model": model, "input_per_mtok": 1,
                            "output_per_mtok": 1, **extra}]}
    return AgentqConfig.model_validate({
        "providers": {"p": {"base_url": url, **quirks}},
        "tiers": {"cheap": entry("gpt-4o-mini"), "standard": entry("gpt-4o"),
                  "premium": entry("o1", **(premium or {}))}})


# --- the pure decision ----------------------------------------------------------------------

def test_call_options_follow_the_provider_and_the_model() -> None:
    task = Task(prompt="hi", max_tokens=7, temperature=0.5)
    plain = ProviderConfig(base_url="http://x/v1")
    entry = ModelEntry(provider="p", model="m", input_per_mtok=0, output_per_mtok=0)
    assert call_options(plain, entry, task) == {"temperature": 0.5, "max_tokens": 7}
    quirky = ProviderConfig(base_url="http://x/v1", supports_temperature=False,
                            max_tokens_param="max_completion_tokens")
    assert call_options(quirky, entry, task) == {"max_completion_tokens": 7}
    # The model's own setting wins over its provider's, either way.
    reasoning = entry.model_copy(update={"supports_temperature": False,
                                         "max_tokens_param": "max_completion_tokens"})
    assert call_options(plain, reasoning, task) == {"max_completion_tokens": 7}
    chatty = entry.model_copy(update={"supports_temperature": True})
    assert call_options(quirky, chatty, Task(prompt="hi")) == {"temperature": 0.0}


@pytest.mark.parametrize(("quirks", "where", "words"), [
    ({"extra_headers": {"Bad Header": "x"}}, "providers.p.extra_headers",
     "'Bad Header' is not a valid HTTP header name"),
    ({"extra_headers": {"X-Ok": "a\r\nX-Evil: 1"}}, "providers.p.extra_headers",
     "the value of 'X-Ok' holds a line break"),
    ({"extra_query": {" ": "1"}}, "providers.p.extra_query", "a parameter name is empty"),
    ({"max_tokens_param": "max_output_tokens"}, "providers.p.max_tokens_param",
     "'max_tokens' or 'max_completion_tokens'"),
    ({"supports_temperature": "sometimes"}, "providers.p.supports_temperature",
     "valid boolean"),
])
def test_a_bad_quirk_is_refused_naming_the_field(quirks: dict[str, Any], where: str,
                                                 words: str) -> None:
    with pytest.raises(ValidationError):
        table("http://x/v1", quirks)
    document = table("http://x/v1", {}).model_dump(exclude_defaults=True)
    document["providers"]["p"].update(quirks)
    problems = [p.line() for p in config_check.table_problems(document, "t.toml")]
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"agentq config: t.toml: {where}"), problems
    assert words in problems[0]


def test_the_example_table_documents_every_quirk() -> None:
    text = (ROOT / "agentq.example.toml").read_text()
    for key in ("extra_headers", "extra_query", "supports_temperature", "max_tokens_param"):
        assert key in text
    AgentqConfig.model_validate(tomllib.loads(text))


# --- what the real server received ----------------------------------------------------------

@pytest.fixture(scope="module")
def mock_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_mockllm(tmp_path_factory.mktemp("mock")) as url:
        yield url


def complete(config: AgentqConfig, tier: str, task: Task) -> str:
    async def run() -> str:
        providers = Providers(config, 30.0)
        try:
            return (await providers.complete(config.primary(tier), task)).text
        finally:
            await providers.close()
    return asyncio.run(run())


def test_extra_headers_and_query_go_with_every_call(mock_url: str) -> None:
    config = table(mock_url, {"extra_headers": {"X-Gateway-Route": "eu-1"},
                              "extra_query": {"api-version": "2024-06-01", "trace": True}})
    assert complete(config, "cheap", Task(prompt="Say hi", max_tokens=20))
    seen = last_request(mock_url)
    assert seen["path"] == "/v1/chat/completions"
    assert seen["headers"]["x-gateway-route"] == "eu-1"  # type: ignore[index]
    assert seen["query"] == {"api-version": "2024-06-01", "trace": "true"}
    body = seen["body"]
    assert body["model"] == "gpt-4o-mini" and body["max_tokens"] == 20  # type: ignore[index]
    assert body["temperature"] == 0.0  # type: ignore[index]


def test_a_provider_without_temperature_never_gets_one(mock_url: str) -> None:
    config = table(mock_url, {"supports_temperature": False,
                              "max_tokens_param": "max_completion_tokens"})
    assert complete(config, "standard", Task(prompt="Say hi", max_tokens=20, temperature=1.2))
    body = last_request(mock_url)["body"]
    assert isinstance(body, dict)
    assert "temperature" not in body and "max_tokens" not in body
    assert body["max_completion_tokens"] == 20


def test_a_reasoning_model_entry_overrides_its_provider(mock_url: str) -> None:
    config = table(mock_url, {}, premium={"supports_temperature": False,
                                          "max_tokens_param": "max_completion_tokens"})
    complete(config, "premium", Task(prompt="Think", max_tokens=30))
    body = last_request(mock_url)["body"]
    assert isinstance(body, dict)
    assert body["model"] == "o1" and body["max_completion_tokens"] == 30
    assert "temperature" not in body and "max_tokens" not in body
    complete(config, "cheap", Task(prompt="Think", max_tokens=30))
    body = last_request(mock_url)["body"]
    assert isinstance(body, dict)
    assert body["max_tokens"] == 30 and body["temperature"] == 0.0


def test_the_recorded_request_hides_the_key(mock_url: str) -> None:
    config = table(mock_url, {"api_key": "sk-secret-value"})
    complete(config, "cheap", Task(prompt="hi", max_tokens=5))
    seen = last_request(mock_url)
    assert seen["headers"]["authorization"] == "<redacted>"  # type: ignore[index]
    assert "sk-secret-value" not in str(seen)
