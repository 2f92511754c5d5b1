"""`agentq config check`: the tier table and the environment, one short line per problem.

The checks of the table and of the environment are pure (a parsed TOML document or a table
in, problems out); only `probe` touches the network, and `check` ties them together.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from services.common.api_keys import KeysError, entries_from_env, entries_from_table, read_keys_file
from services.common.config import MOCK_BASE_URL, AgentqConfig, ConfigError, load_config
from services.common.models import TIERS
from services.common.provider_models import NotAnswering, fetch_models, unreachable_reason

PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Problem:
    """One thing wrong, and where: a table path (`tiers.cheap.models[0]`) or a file."""

    where: str
    message: str
    # A warning is said but does not stop `agentq up` (a local server that needs no key).
    severity: Literal["error", "warning"] = "error"

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
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return unreachable_reason(exc, timeout_s)


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


def is_local(base_url: str) -> bool:
    """Whether a base URL is on this host or a private network (a local server, which may
    need no key), not a public provider."""
    host = (urllib.parse.urlsplit(base_url).hostname or "").lower()
    if host == "localhost" or host.endswith((".local", ".localhost", ".internal")):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return "." not in host  # a bare name: a container or a host on the local network
    return address.is_loopback or address.is_private or address.is_unspecified


def _models_in_use(config: AgentqConfig) -> dict[str, dict[str, str]]:
    """Return, per provider, each model the table calls and the first place it is named."""
    used: dict[str, dict[str, str]] = {name: {} for name in config.providers}
    for tier, tier_config in config.tiers.items():
        for index, entry in enumerate(tier_config.models):
            used[entry.provider].setdefault(entry.model, f"tiers.{tier}.models[{index}]")
    return used


def key_problem(name: str, base_url: str, api_key_env: str | None, api_key: str
                ) -> Problem | None:
    """Return what is wrong with a provider's key: none for a remote URL is an error; an
    unset api_key_env for a local one is a warning (a local server may need no key)."""
    if api_key:
        return None
    local = is_local(base_url)
    if api_key_env:
        return Problem(f"providers.{name}", f"{api_key_env} is not set (api_key_env): its "
                       "calls go without a key", "warning" if local else "error")
    if not local:
        return Problem(f"providers.{name}", "no key: set api_key_env to the variable that "
                       f"holds the key for {base_url}")
    return None


def served_problems(config: AgentqConfig, environ: Mapping[str, str], skip: Iterable[str] = (),
                    timeout_s: float = PROBE_TIMEOUT_S) -> list[Problem]:
    """Ask each provider's GET /models: a base URL that does not answer, and each model of
    the table that the provider's list (when it gives one) does not hold."""
    skipped = set(skip)
    problems = []
    for name, models in _models_in_use(config).items():
        if name in skipped:
            continue
        provider = config.providers[name]
        api_key = provider.api_key or environ.get(provider.api_key_env or "", "")
        try:
            listed = fetch_models(provider.base_url, api_key, provider.extra_headers,
                                  provider.extra_query, timeout_s)
        except NotAnswering as exc:
            problems.append(Problem(f"providers.{name}",
                                    f"{provider.base_url}: not answering ({exc})"))
            continue
        if listed is None:
            continue  # it answers but gives no list (no /models, or the key is refused)
        shown = ", ".join(listed[:8]) + (", ..." if len(listed) > 8 else "")
        # A warning: many servers (gateways with wildcard routes, the simulated provider)
        # answer models they do not list.
        problems += [Problem(f"providers.{name}",
                             f"unknown model {model!r} ({where}): {provider.base_url}/models "
                             f"lists {shown or 'none'}", "warning")
                     for model, where in models.items() if model not in listed]
    return problems


def check_providers(config: AgentqConfig, environ: Mapping[str, str] | None = None,
                    timeout_s: float = PROBE_TIMEOUT_S) -> list[str]:
    """Check every provider at a worker's start-up; return one line per problem, each
    naming the provider: its key, whether its base URL answers, the models it serves."""
    environ = os.environ if environ is None else environ
    problems = [problem for name, provider in config.providers.items()
                if (problem := key_problem(name, provider.base_url, provider.api_key_env,
                                           provider.api_key
                                           or environ.get(provider.api_key_env or "", "")))]
    problems += served_problems(config, environ, timeout_s=timeout_s)
    return [f"{p.severity}: provider {p.where.removeprefix('providers.')!r}: {p.message}"
            for p in problems]


@dataclass(frozen=True)
class Report:
    config: AgentqConfig | None
    source: str
    problems: list[Problem]  # errors: the stack does not start
    warnings: list[Problem] = field(default_factory=list)  # said, but not in the way


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
    problems += [problem for name, provider in config.providers.items()
                 if not provider.api_key_env
                 and (problem := key_problem(name, provider.base_url, None, provider.api_key
                                             or ""))]
    if probe_providers:
        problems += served_problems(config, environ, skip=skip_probe)
    return Report(config, source, [p for p in problems if p.severity == "error"],
                  [p for p in problems if p.severity == "warning"])


def summary(report: Report) -> str:
    """One line for a table that passed: where it came from, its providers and tiers."""
    assert report.config is not None
    tiers = ", ".join(f"{tier} {report.config.primary(tier).model}" for tier in TIERS)
    return (f"agentq config: OK ({report.source}): providers "
            f"{', '.join(report.config.providers)}; tiers {tiers}")
