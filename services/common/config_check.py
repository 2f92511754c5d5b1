"""`agentq config check`: the tier table and the environment, one short line per problem.

The checks of the table and of the environment are pure (a parsed TOML document or a table
in, problems out); only `probe` touches the network, and `check` ties them together.
"""

from __future__ import annotations

import socket
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from services.common.api_keys import KeysError, entries_from_env, entries_from_table, read_keys_file
from services.common.config import MOCK_BASE_URL, AgentqConfig, ConfigError, load_config
from services.common.models import TIERS

PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Problem:
    """One thing wrong, and where: a table path (`tiers.cheap.models[0]`) or a file."""

    where: str
    message: str

    def line(self) -> str:
        return f"agentq config: {self.where}: {self.message}"


def _path(loc: Iterable[int | str]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part != "[key]":
            text += f".{part}" if text else str(part)
    return text


def _describe(error: Mapping[str, Any]) -> str:
    loc, kind = tuple(error["loc"]), error["type"]
    if kind == "missing":
        name = str(loc[-1]) if loc else "value"
        if name.endswith("_per_mtok"):
            return f"price missing: {name} (US$ per million tokens) is required"
        return f"{name} is required"
    if loc[:1] == ("tiers",) and "[key]" in loc:
        return (f"unknown tier {error['input']!r} (the tiers are {', '.join(TIERS)})")
    if kind == "literal_error" and loc and loc[0] in ("routing", "tenants"):
        return f"unknown tier {error['input']!r} (the tiers are {', '.join(TIERS)})"
    if kind == "extra_forbidden":
        return "unknown setting"
    return str(error["msg"]).removeprefix("Value error, ")


def table_problems(document: Mapping[str, Any], source: str) -> list[Problem]:
    """Return what is wrong with a parsed tier table (empty when it loads)."""
    try:
        AgentqConfig.model_validate(document)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            where = _path(error["loc"])
            problems.append(Problem(f"{source}: {where}" if where else source,
                                    _describe(error)))
        return problems
    return []


def environment_problems(config: AgentqConfig, environ: Mapping[str, str]) -> list[Problem]:
    """Return each provider whose `api_key_env` names a variable that is unset or empty."""
    return [Problem(f"providers.{name}", f"{provider.api_key_env} is not set (api_key_env)")
            for name, provider in config.providers.items()
            if provider.api_key_env and not provider.api_key
            and not environ.get(provider.api_key_env)]


def key_problems(environ: Mapping[str, str]) -> list[Problem]:
    """Return what is wrong with AGENTQ_API_KEYS and the file AGENTQ_API_KEYS_FILE names."""
    problems = []
    try:
        entries_from_env(environ.get("AGENTQ_API_KEYS", ""))
    except KeysError as exc:
        problems.append(Problem("AGENTQ_API_KEYS", str(exc)))
    path = environ.get("AGENTQ_API_KEYS_FILE", "")
    if path:
        try:
            entries_from_table(read_keys_file(Path(path)))
        except KeysError as exc:
            problems.append(Problem("AGENTQ_API_KEYS_FILE", str(exc)))
    return problems


def probe(base_url: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """GET `<base_url>/models`; return why the server does not answer, or None if it does.

    Any HTTP status counts as an answer (401 without a key, 404 on servers without the
    endpoint): the question is only whether something listens there.
    """
    url = base_url.rstrip("/") + "/models"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s):
            return None
    except urllib.error.HTTPError:
        return None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, ConnectionRefusedError):
            return "connection refused"
        if isinstance(reason, socket.gaierror):
            return "host not found"
        if isinstance(reason, TimeoutError | socket.timeout):
            return f"no answer within {timeout_s:.0f} s"
        return str(reason)
    except (TimeoutError, OSError) as exc:
        return str(exc) or type(exc).__name__
    except ValueError as exc:  # not a URL urllib can open
        return f"not a usable URL ({exc})"


def reachability_problems(config: AgentqConfig, skip: Iterable[str] = (),
                          timeout_s: float = PROBE_TIMEOUT_S) -> list[Problem]:
    skipped = set(skip)
    problems = []
    for name, provider in config.providers.items():
        if name in skipped:
            continue
        reason = probe(provider.base_url, timeout_s)
        if reason is not None:
            problems.append(Problem(f"providers.{name}",
                                    f"{provider.base_url}: not answering ({reason})"))
    return problems


@dataclass(frozen=True)
class Report:
    config: AgentqConfig | None
    source: str
    problems: list[Problem]


def check(path: Path | None, environ: Mapping[str, str], *, openai_api_key: str = "",
          openai_base_url: str = "", mockllm_url: str = "", probe_providers: bool = True,
          skip_probe: Iterable[str] = ()) -> Report:
    """Load the table in force (a file, or the built-in one) and check it and the
    environment; probe each provider's base URL unless told not to."""
    source = str(path) if path is not None else "built-in tier table"
    if path is not None:
        try:
            document = tomllib.loads(Path(path).read_text())
        except OSError as exc:
            return Report(None, source, [Problem(source, f"cannot read: {exc.strerror}")])
        except tomllib.TOMLDecodeError as exc:
            return Report(None, source, [Problem(source, f"not valid TOML: {exc}")])
        problems = table_problems(document, source)
        if problems:
            return Report(None, source, problems)
    try:
        config = load_config(path, openai_api_key, openai_base_url,
                             mockllm_url or MOCK_BASE_URL)
    except ConfigError as exc:
        return Report(None, source, [Problem(source, str(exc))])
    problems = environment_problems(config, environ) + key_problems(environ)
    if probe_providers:
        problems += reachability_problems(config, skip=skip_probe)
    return Report(config, source, problems)


def summary(report: Report) -> str:
    """One line for a table that passed: where it came from, its providers and tiers."""
    assert report.config is not None
    tiers = ", ".join(f"{tier} {report.config.primary(tier).model}" for tier in TIERS)
    return (f"agentq config: OK ({report.source}): providers "
            f"{', '.join(report.config.providers)}; tiers {tiers}")
