"""`agentq config check` and the check `agentq up` runs first: one line per problem."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.stack import ROOT, free_port, wait_until
from services.common import config_check
from services.common.config import load_config

GOOD = """
[providers.local]
base_url = "{url}"

[tiers.cheap]
models = [{{ provider = "local", model = "m-small", input_per_mtok = 0.1, output_per_mtok = 0.4 }}]
[tiers.standard]
models = [{{ provider = "local", model = "m-mid", input_per_mtok = 1.0, output_per_mtok = 4.0 }}]
[tiers.premium]
models = [{{ provider = "local", model = "m-big", input_per_mtok = 10, output_per_mtok = 40 }}]
"""


def closed_port_url() -> str:
    """A base URL on this host where nothing listens (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def problems_of(text: str) -> list[str]:
    return [p.line() for p in config_check.table_problems(tomllib.loads(text), "t.toml")]


# --- the pure checks ------------------------------------------------------------------------

def test_a_good_table_has_no_problems() -> None:
    assert problems_of(GOOD.format(url="http://x/v1")) == []


def test_an_unknown_tier_is_named() -> None:
    text = GOOD.format(url="http://x/v1") + (
        '[tiers.gold]\nmodels = [{ provider = "local", model = "g", input_per_mtok = 1, '
        "output_per_mtok = 1 }]\n")
    assert problems_of(text) == ["agentq config: t.toml: tiers.gold: unknown tier 'gold' "
                                 "(the tiers are cheap, standard, premium)"]


def test_a_routing_rule_to_an_unknown_tier_is_named() -> None:
    text = GOOD.format(url="http://x/v1") + '[routing.kinds]\nclassify = "cheapest"\n'
    assert problems_of(text) == ["agentq config: t.toml: routing.kinds.classify: unknown tier "
                                 "'cheapest' (the tiers are cheap, standard, premium)"]


def test_a_missing_price_is_named_with_its_place() -> None:
    text = GOOD.format(url="http://x/v1").replace(", output_per_mtok = 4.0", "")
    assert problems_of(text) == [
        "agentq config: t.toml: tiers.standard.models[0].output_per_mtok: price missing: "
        "output_per_mtok (US$ per million tokens) is required"]


def test_each_problem_gets_its_own_line() -> None:
    text = (GOOD.format(url="http://x/v1").replace(", input_per_mtok = 0.1", "")
            .replace('model = "m-big", ', 'model = "m-big", colour = "red", '))
    lines = problems_of(text)
    assert len(lines) == 2
    assert all("\n" not in line for line in lines)
    assert "tiers.premium.models[0].colour: unknown setting" in lines[1]


def test_a_missing_tier_and_an_undefined_provider_are_named() -> None:
    no_premium = GOOD.format(url="http://x/v1").split("[tiers.premium]")[0]
    assert problems_of(no_premium) == [
        "agentq config: t.toml: tiers ['premium'] are not configured"]
    ghost = GOOD.format(url="http://x/v1").replace('provider = "local", model = "m-mid"',
                                                   'provider = "ghost", model = "m-mid"')
    assert problems_of(ghost) == [
        "agentq config: t.toml: tiers.standard: provider 'ghost' is not in [providers]"]


def test_an_unset_api_key_env_is_named() -> None:
    config = load_config(None, openai_api_key="sk-test")  # built-in: api_key_env OPENAI_API_KEY
    assert [p.line() for p in config_check.environment_problems(config, {})] == [
        "agentq config: providers.openai: OPENAI_API_KEY is not set (api_key_env)"]
    assert config_check.environment_problems(config, {"OPENAI_API_KEY": "sk-test"}) == []
    assert config_check.environment_problems(config, {"OPENAI_API_KEY": ""}) != []


# --- the probe and the command, for real ----------------------------------------------------

@pytest.fixture(scope="module")
def answering_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The simulated provider, started as a user would (`agentq mockllm`)."""
    port = free_port()
    log = (tmp_path_factory.mktemp("mock") / "mock.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "services.cli", "mockllm", "--port",
                                str(port)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_until(lambda: config_check.probe(url) is None, 30, "mockllm answering")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()


def test_probe_tells_answering_from_not_answering(answering_url: str) -> None:
    assert config_check.probe(answering_url) is None
    assert config_check.probe(closed_port_url()) == "connection refused"


def agentq(*args: str, config: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith("AGENTQ_") and k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    environ["AGENTQ_NAMESPACE"] = f"agentq_cfg_{uuid.uuid4().hex[:8]}"
    if config is not None:
        environ["AGENTQ_CONFIG"] = str(config)
    return subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=ROOT,
                          env={**environ, **env}, capture_output=True, text=True, timeout=60)


def test_config_check_passes_a_good_table(tmp_path: Path, answering_url: str) -> None:
    table = tmp_path / "agentq.toml"
    table.write_text(GOOD.format(url=answering_url))
    done = agentq("config", "check", "--config", str(table))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"agentq config: OK ({table})")
    assert "cheap m-small, standard m-mid, premium m-big" in done.stdout


def test_config_check_fails_on_a_base_url_not_answering(tmp_path: Path) -> None:
    url = closed_port_url()
    table = tmp_path / "agentq.toml"
    table.write_text(GOOD.format(url=url))
    done = agentq("config", "check", config=table)
    assert done.returncode == 1
    assert done.stderr.splitlines()[0] == (
        f"agentq config: providers.local: {url}: not answering (connection refused)")
    assert agentq("config", "check", "--offline", config=table).returncode == 0


def test_config_check_on_malformed_toml_is_one_line(tmp_path: Path) -> None:
    table = tmp_path / "agentq.toml"
    table.write_text("[providers.local\nbase_url = 1\n")
    done = agentq("config", "check", "--config", str(table))
    assert done.returncode == 1
    first = done.stderr.splitlines()[0]
    assert first.startswith(f"agentq config: {table}: not valid TOML: ") and "line 1" in first
    assert "Traceback" not in done.stderr


def test_agentq_up_with_a_bad_table_prints_the_problems_not_a_traceback(tmp_path: Path) -> None:
    table = tmp_path / "bad.toml"
    table.write_text(GOOD.format(url="http://127.0.0.1:9/v1").replace("[tiers.cheap]",
                                                                        "[tiers.cheapest]"))
    done = agentq("up", "--config", str(table))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr + done.stdout
    lines = done.stderr.splitlines()
    assert "agentq config: " + str(table) + ": tiers.cheapest: unknown tier 'cheapest'" \
        in lines[0]
    assert lines[-1].startswith("agentq up: not started")
    assert "ingest" not in done.stdout  # nothing was started


def test_agentq_up_with_an_unset_key_says_so(tmp_path: Path) -> None:
    table = tmp_path / "agentq.toml"
    table.write_text(GOOD.format(url=closed_port_url()).replace(
        '[providers.local]\n', '[providers.local]\napi_key_env = "AGENTQ_TEST_UNSET_KEY"\n'))
    done = agentq("up", "--config", str(table))
    assert done.returncode == 1
    assert "agentq config: providers.local: AGENTQ_TEST_UNSET_KEY is not set (api_key_env)" \
        in done.stderr.splitlines()
    assert any("not answering (connection refused)" in line for line in done.stderr.splitlines())
