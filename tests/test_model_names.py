"""The built-in tier table takes its model names from settings (AGENTQ_MODEL_*) or from the
provider's GET /v1/models (AGENTQ_MODELS_FROM_PROVIDER=1)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from services.common.config import BuiltinModels, ConfigError, load_config
from services.common.models import TIERS
from services.common.provider_models import choose_tier_models, fetch_models
from tests.mock_server import running_mockllm
from tests.test_config_check import closed_port_url

WANTED = {"cheap": "gpt-4o-mini", "standard": "gpt-4o", "premium": "o1"}


def test_the_defaults_are_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CHEAP", "STANDARD", "PREMIUM"):
        monkeypatch.delenv(f"AGENTQ_MODEL_{name}", raising=False)
    monkeypatch.delenv("AGENTQ_MODELS_FROM_PROVIDER", raising=False)
    assert {t: load_config(None).primary(t).model for t in TIERS} == WANTED


def test_names_come_from_the_environment_on_every_built_in_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTQ_MODEL_CHEAP", "llama3.1:8b")
    monkeypatch.setenv("AGENTQ_MODEL_PREMIUM", "qwen2.5:72b")
    for args in ({}, {"openai_base_url": "http://127.0.0.1:11434/v1"},
                 {"openai_api_key": "sk-x"}):
        config = load_config(None, **args)
        assert [config.primary(t).model for t in TIERS] == ["llama3.1:8b", "gpt-4o",
                                                           "qwen2.5:72b"], args


def test_a_blank_model_name_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTQ_MODEL_STANDARD", " ")
    with pytest.raises(ConfigError, match="AGENTQ_MODEL_STANDARD: a model name"):
        load_config(None)


@pytest.mark.parametrize(("available", "chosen", "shared"), [
    (["gpt-4o-mini", "gpt-4o", "o1", "text-embedding-3-small"], WANTED, 0),
    (["llama3", "text-embedding-3-small"], {t: "llama3" for t in TIERS}, 2),
    (["small", "big"], {"cheap": "small", "standard": "big", "premium": "big"}, 1),
    (["o1", "gpt-4o-mini"], {"cheap": "gpt-4o-mini", "standard": "gpt-4o-mini",
                              "premium": "o1"}, 1),
    (["a", "b", "c", "d"], {"cheap": "a", "standard": "b", "premium": "c"}, 0),
])
def test_choosing_from_the_providers_list(available: list[str], chosen: dict[str, str],
                                          shared: int) -> None:
    got, notes = choose_tier_models(available, WANTED)
    assert got == chosen
    assert len([n for n in notes if "shares" in n]) == shared
    # Every tier whose model changed says so, one line each.
    changed = [t for t in TIERS if got[t] != WANTED[t]]
    assert sorted(n.split(":")[0] for n in notes) == sorted(f"tier {t}" for t in changed)


def test_a_list_without_chat_models_keeps_the_settings() -> None:
    got, notes = choose_tier_models(["text-embedding-3-small"], WANTED)
    assert got == WANTED and len(notes) == 1 and "no chat model" in notes[0]


@pytest.fixture(scope="module")
def mock_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_mockllm(tmp_path_factory.mktemp("mock")) as url:
        yield url


def test_names_from_the_real_providers_list(mock_url: str, caplog: pytest.LogCaptureFixture
                                            ) -> None:
    listed = fetch_models(mock_url)
    assert listed is not None and "gpt-4o" in listed and "text-embedding-3-small" in listed
    caplog.set_level(logging.WARNING, "agentq.config")
    models = BuiltinModels(model_cheap="llama-tiny", models_from_provider=True)
    config = load_config(None, mockllm_url=mock_url, models=models)
    # llama-tiny is not served: the cheap tier takes the first listed model no tier has.
    assert config.primary("cheap").model == listed[0] == "gpt-4o-mini"
    assert [config.primary(t).model for t in ("standard", "premium")] == ["gpt-4o", "o1"]
    assert any("tier cheap: llama-tiny is not listed" in r.getMessage() for r in caplog.records)


def test_a_provider_not_answering_keeps_the_settings(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "agentq.config")
    url = closed_port_url()
    config = load_config(None, mockllm_url=url,
                         models=BuiltinModels(models_from_provider=True))
    assert config.primary("cheap").model == "gpt-4o-mini"
    assert any("not answering (connection refused)" in r.getMessage() for r in caplog.records)
