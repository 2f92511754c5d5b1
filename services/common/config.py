"""Load the tier table (`agentq.toml`): providers, tiers, routing rules, tenants."""

from __future__ import annotations

import logging
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.api_keys import KeysError, entries_from_table
from services.common.cost_config import (
    BreakerConfig,
    BudgetConfig,
    CacheConfig,
    CascadeConfig,
    ComplexityConfig,
)
from services.common.models import TIERS, Tier
from services.common.provider_models import NotAnswering, choose_tier_models, fetch_models
from services.common.settings import DEFAULT_PORTS

log = logging.getLogger("agentq.config")

MOCK_BASE_URL = f"http://127.0.0.1:{DEFAULT_PORTS['mockllm']}/v1"

# The parameter that caps an answer's length: OpenAI's reasoning models (o1, o3) refuse
# `max_tokens` and want `max_completion_tokens`; most other servers know only `max_tokens`.
MaxTokensParam = Literal["max_tokens", "max_completion_tokens"]
QueryValue = str | int | float | bool

# An HTTP header name is a token (RFC 9110 5.6.2): no spaces, colons or control characters.
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


class ConfigError(ValueError):
    """The tier table is missing something or contradicts itself."""


class ProviderConfig(BaseModel):
    """One provider key: where to call and the budget every worker shares."""

    model_config = ConfigDict(extra="forbid")

    base_url: str
    api_key_env: str | None = None
    api_key: str | None = None
    rpm: int = Field(default=0, ge=0)  # 0 = no limit known
    tpm: int = Field(default=0, ge=0)
    timeout_s: float = Field(default=120.0, gt=0)
    # What the provider's TPM limit counts for a call: "reserved" = prompt + max_tokens at
    # admission, never refunded (OpenAI and the simulated provider); "used" = the tokens the
    # call really used. The limiter settles each call to this figure.
    tpm_counts: Literal["reserved", "used"] = "reserved"
    # Quirks of the server behind the URL, sent with every call (Azure's `api-version`,
    # a gateway's routing header), and what it refuses (temperature, max_tokens).
    extra_headers: dict[str, str] = Field(default_factory=dict)
    extra_query: dict[str, QueryValue] = Field(default_factory=dict)
    supports_temperature: bool = True
    max_tokens_param: MaxTokensParam = "max_tokens"
    # Whether it speaks OpenAI's Batch API (/v1/files, /v1/batches): false sends its
    # deferrable tasks live. A batch line costs the live price times (1 - batch_discount).
    batch: bool = True
    batch_discount: float = Field(default=0.5, ge=0, le=1)

    @field_validator("extra_headers")
    @classmethod
    def _headers_are_sendable(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"extra_headers: {name!r} is not a valid HTTP header name")
            if "\r" in value or "\n" in value:
                raise ValueError(f"extra_headers: the value of {name!r} holds a line break")
        return headers

    @field_validator("extra_query")
    @classmethod
    def _query_names_are_set(cls, query: dict[str, QueryValue]) -> dict[str, QueryValue]:
        if any(not name.strip() for name in query):
            raise ValueError("extra_query: a parameter name is empty")
        return query


class ModelEntry(BaseModel):
    """A model a tier can call, with its price per million tokens."""

    model_config = ConfigDict(extra="forbid")

    provider: str
    model: str
    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)
    context: int = Field(default=128_000, gt=0)
    rpm: int | None = Field(default=None, ge=0)
    tpm: int | None = Field(default=None, ge=0)
    # A model's own quirks, over its provider's (None = as the provider says): one provider
    # serves gpt-4o and o1, and only o1 refuses temperature and max_tokens.
    supports_temperature: bool | None = None
    max_tokens_param: MaxTokensParam | None = None
    # The tokenizer its prompts are counted with (services.common.tokens): "cl100k_base",
    # "o200k_base" or "approx"; None = chosen by the model's name.
    tokenizer: Literal["cl100k_base", "o200k_base", "approx"] | None = None

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Price a call in US dollars."""
        return (prompt_tokens * self.input_per_mtok
                + completion_tokens * self.output_per_mtok) / 1_000_000


class TierConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[ModelEntry] = Field(min_length=1)


class RoutingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kinds: dict[str, Tier] = Field(default_factory=dict)
    # Prompt length (tokens) from which a task of unknown kind goes up a tier.
    standard_from_tokens: int = 1_500
    premium_from_tokens: int = 6_000
    # Kinds without a rule go up a tier when their complexity score passes these.
    complexity: ComplexityConfig = Field(default_factory=ComplexityConfig)
    # The lowest tier a kind can do its job on: a budget downgrade never goes below it.
    floors: dict[str, Tier] = Field(default_factory=dict)


class BatchConfig(BaseModel):
    """How deferrable tasks wait for provider batches (`[batches]`, services.batcher)."""

    model_config = ConfigDict(extra="forbid")

    # A (provider, model) batch goes out at this many lines, or when its oldest task has
    # waited max_age_s, whichever comes first.
    max_lines: int = Field(default=1_000, ge=1, le=50_000)
    max_age_s: float = Field(default=60.0, ge=0)
    poll_s: float = Field(default=30.0, gt=0)  # how often batches in flight are asked about
    # The turnaround the router expects of a batch (providers promise 24 h, most take far
    # less), and the time a live call needs when a batch is late: a task goes to a batch only
    # when its deadline leaves both, and is sent live at deadline - live_margin_s.
    turnaround_s: float = Field(default=3_600.0, ge=0)
    live_margin_s: float = Field(default=900.0, ge=0)


class TenantConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weight: float = Field(default=1.0, gt=0)
    min_share: float = Field(default=0.0, ge=0, le=1)
    ceiling: Tier | None = None
    kinds: dict[str, Tier] = Field(default_factory=dict)
    budget: BudgetConfig | None = None


class AgentqConfig(BaseModel):
    """The whole tier table."""

    model_config = ConfigDict(extra="allow")

    providers: dict[str, ProviderConfig]
    tiers: dict[Tier, TierConfig]
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    tenants: dict[str, TenantConfig] = Field(default_factory=dict)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    cascade: CascadeConfig = Field(default_factory=CascadeConfig)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    batches: BatchConfig = Field(default_factory=BatchConfig)
    # API keys by tenant ("*" = admin), as `sha256:<hex>` digests: see services.common.api_keys.
    api_keys: dict[str, list[str]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _references_resolve(self) -> AgentqConfig:
        try:
            entries_from_table(self.api_keys)
        except KeysError as exc:
            raise ConfigError(f"api_keys: {exc}") from None
        missing = [t for t in TIERS if t not in self.tiers]
        if missing:
            raise ConfigError(f"tiers {missing} are not configured")
        for tier, tier_config in self.tiers.items():
            for entry in tier_config.models:
                if entry.provider not in self.providers:
                    raise ConfigError(
                        f"tiers.{tier}: provider {entry.provider!r} is not in [providers]")
        return self

    def primary(self, tier: str) -> ModelEntry:
        """Return the first model entry of a tier."""
        return self.tiers[tier].models[0]  # type: ignore[index]

    def tenant(self, name: str) -> TenantConfig:
        return self.tenants.get(name, TenantConfig())


class BuiltinModels(BaseSettings):
    """The model names of the built-in tier table (AGENTQ_MODEL_CHEAP, _STANDARD, _PREMIUM),
    or, with AGENTQ_MODELS_FROM_PROVIDER=1, the ones its provider lists at GET /v1/models."""

    model_config = SettingsConfigDict(env_prefix="AGENTQ_", extra="ignore",
                                      protected_namespaces=())

    model_cheap: str = "gpt-4o-mini"
    model_standard: str = "gpt-4o"
    model_premium: str = "o1"
    models_from_provider: bool = False

    @field_validator("model_cheap", "model_standard", "model_premium")
    @classmethod
    def _a_name(cls, value: str) -> str:
        if not value.strip() or value != value.strip():
            raise ValueError(f"a model name, without spaces around it, not {value!r}")
        return value

    def by_tier(self) -> dict[str, str]:
        return {"cheap": self.model_cheap, "standard": self.model_standard,
                "premium": self.model_premium}


# The built-in tiers' prices (OpenAI's for the default models), whatever the model names.
_BUILTIN_PRICES = {"cheap": (0.15, 0.60), "standard": (2.50, 10.00), "premium": (15.00, 60.00)}


def models_for(provider: dict[str, Any], models: BuiltinModels, api_key: str) -> dict[str, str]:
    """Return the built-in tiers' model names: from settings, or from the provider's list."""
    wanted = models.by_tier()
    if not models.models_from_provider:
        return wanted
    url = provider["base_url"]
    try:
        available = fetch_models(url, api_key)
    except NotAnswering as exc:
        log.warning("built-in tier table: provider at %s is not answering (%s); the tiers "
                    "keep the model names from settings", url, exc)
        return wanted
    if available is None:
        log.warning("built-in tier table: %s/models gives no model list; the tiers keep the "
                    "model names from settings", url.rstrip("/"))
        return wanted
    chosen, notes = choose_tier_models(available, wanted)
    for note in notes:
        log.warning("built-in tier table (%s): %s", url, note)
    return chosen


def _builtin(openai_api_key: str = "", openai_base_url: str = "",
             mockllm_url: str = MOCK_BASE_URL,
             models: BuiltinModels | None = None) -> dict[str, Any]:
    """Return the default tier table: OpenAI when a key is set, any OpenAI-compatible server
    at OPENAI_BASE_URL (vLLM, Ollama) without one, else the simulated provider."""
    if openai_api_key:
        name = "openai"
        provider: dict[str, Any] = {
            "base_url": openai_base_url or "https://api.openai.com/v1",
            "api_key_env": "OPENAI_API_KEY", "rpm": 500, "tpm": 200_000}
    elif openai_base_url:
        name = "openai"
        provider = {"base_url": openai_base_url}
    else:
        name = "mock"
        provider = {"base_url": mockllm_url, "rpm": 6_000, "tpm": 2_000_000}
    names = models_for(provider, models or BuiltinModels(), openai_api_key)
    tiers = {tier: {"models": [{"provider": name, "model": names[tier],
                                "input_per_mtok": price[0], "output_per_mtok": price[1]}]}
             for tier, price in _BUILTIN_PRICES.items()}
    return {
        "providers": {name: provider},
        "tiers": tiers,
        "routing": {"kinds": {"classify": "cheap", "extract": "cheap",
                              "summarize": "standard", "reason": "premium"},
                    "floors": {"reason": "standard"}},
    }


def load_config(path: Path | None, openai_api_key: str = "", openai_base_url: str = "",
                mockllm_url: str = MOCK_BASE_URL,
                models: BuiltinModels | None = None) -> AgentqConfig:
    """Read the tier table from a TOML file, or return the built-in one (its model names
    from `models`, by default the AGENTQ_MODEL_* settings)."""
    if path is None:
        try:
            names = models or BuiltinModels()
        except ValidationError as exc:
            raise ConfigError(f"AGENTQ_MODEL_*: {_first_error(exc)}") from None
        return AgentqConfig.model_validate(
            _builtin(openai_api_key, openai_base_url, mockllm_url, names))
    try:
        raw = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    return AgentqConfig.model_validate(raw)


def _first_error(exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    field = "AGENTQ_" + str(error["loc"][0]).upper() if error["loc"] else "value"
    return f"{field}: {str(error['msg']).removeprefix('Value error, ')}"
