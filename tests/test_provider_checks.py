"""Start-up checks of each provider, one line each naming it: its key, whether its base URL
answers, and the models the table calls that its GET /v1/models does not list."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.common import config_check
from services.common.config import AgentqConfig
from tests.mock_server import last_request, running_mockllm
from tests.test_config_check import GOOD, agentq, closed_port_url


def table(providers: dict[str, dict[str, Any]], models: dict[str, str]) -> AgentqConfig:
    def tier(tier_name: str) -> dict[str, Any]:
        provider, _, model = models[tier_name].partition("/")
        return {"models": [{"provider": provider, "model": model, "input_per_mtok": 1,
                            "output_per_mtok": 1}]}
    return AgentqConfig.model_validate({"providers": providers,
                                        "tiers": {t: tier(t) for t in models}})


@pytest.mark.parametrize(("url", "env", "key", "severity"), [
    ("https://api.openai.com/v1", "OPENAI_API_KEY", "", "error"),
    ("https://api.openai.com/v1", None, "", "error"),
    ("http://127.0.0.1:11434/v1", "OLLAMA_KEY", "", "warning"),
    ("http://ollama:11434/v1", "OLLAMA_KEY", "", "warning"),
    ("http://10.1.2.3:8000/v1", "VLLM_KEY", "", "warning"),
    ("http://127.0.0.1:11434/v1", None, "", None),  # a local server named no key: fine
    ("https://api.openai.com/v1", "OPENAI_API_KEY", "sk-1", None),
])
def test_key_problems_by_where_the_provider_is(url: str, env: str | None, key: str,
                                               severity: str | None) -> None:
    problem = config_check.key_problem("p", url, env, key)
    assert (problem.severity if problem else None) == severity
    if problem is not None:
        assert problem.where == "providers.p" and "\n" not in problem.message
        assert (env or "api_key_env") in problem.message


@pytest.fixture(scope="module")
def mock_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_mockllm(tmp_path_factory.mktemp("mock")) as url:
        yield url


def test_check_providers_names_each_provider_once_per_problem(mock_url: str) -> None:
    down = closed_port_url()
    config = table({"mock": {"base_url": mock_url, "api_key_env": "AGENTQ_TEST_NO_KEY",
                             "extra_headers": {"X-Probe": "1"}},
                    "down": {"base_url": down}},
                   {"cheap": "mock/gpt-4o-mini", "standard": "mock/llama-9000",
                    "premium": "down/big"})
    lines = config_check.check_providers(config, environ={})
    assert lines == [
        "warning: provider 'mock': AGENTQ_TEST_NO_KEY is not set (api_key_env): its calls go "
        "without a key",
        f"warning: provider 'mock': unknown model 'llama-9000' (tiers.standard.models[0]): "
        f"{mock_url}/models lists gpt-4o-mini, gpt-4o, o1, claude-3-5-haiku, claude-sonnet-4, "
        "text-embedding-3-small",
        f"error: provider 'down': {down}: not answering (connection refused)",
    ]
    # The probe went as the worker's calls go: with the provider's own headers.
    seen = last_request(mock_url)
    assert seen["path"] == "/v1/models"
    assert seen["headers"]["x-probe"] == "1"  # type: ignore[index]


def test_a_healthy_provider_gives_no_line(mock_url: str) -> None:
    config = table({"mock": {"base_url": mock_url, "api_key_env": "AGENTQ_TEST_KEY"}},
                   {"cheap": "mock/gpt-4o-mini", "standard": "mock/gpt-4o",
                    "premium": "mock/o1"})
    assert config_check.check_providers(config, environ={"AGENTQ_TEST_KEY": "k"}) == []


def test_config_check_reports_an_unknown_model(mock_url: str) -> None:
    config = table({"mock": {"base_url": mock_url}},
                   {"cheap": "mock/gpt-4o-mini", "standard": "mock/gpt-4o",
                    "premium": "mock/o9"})
    lines = [p.line() for p in config_check.served_problems(config, {})]
    assert len(lines) == 1
    assert lines[0].startswith("agentq config: providers.mock: unknown model 'o9' "
                               "(tiers.premium.models[0])")


def test_config_check_warns_of_an_unknown_model_and_still_passes(mock_url: str,
                                                                tmp_path: Path) -> None:
    path = tmp_path / "agentq.toml"
    path.write_text(GOOD.format(url=mock_url))  # m-small, m-mid, m-big: none listed
    done = agentq("config", "check", "--config", str(path))
    assert done.returncode == 0, done.stderr
    warnings = done.stderr.splitlines()
    assert len(warnings) == 3
    assert warnings[0].startswith("agentq config: providers.local: unknown model 'm-small' "
                                  "(tiers.cheap.models[0]): ")
    assert all(line.endswith("(warning)") for line in warnings)
