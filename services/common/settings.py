"""Read every agentq setting from the environment, once, into one typed object."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from services.common.api_keys import KeyTable
    from services.common.config import AgentqConfig


# Every default port, in one table (the design's "Ports (defaults)"): the HTTP servers and the
# simulated provider. Their variables (AGENTQ_INGEST_PORT, ...) override them.
DEFAULT_PORTS: Mapping[str, int] = MappingProxyType({
    "ingest": 8000, "dashboard": 8080, "mockllm": 8100})
# Each loop service's default Prometheus port (AGENTQ_METRICS_PORT overrides it).
METRICS_PORTS: Mapping[str, int] = MappingProxyType({
    "intake": 9101, "router": 9102, "recorder": 9103, "autoscale": 9104,
    "dashboard-collector": 9105, "batcher": 9107, "worker": 9110})
# `agentq up` and the autoscaler give worker slot N the metrics port base + N, so that every
# worker on one host can be scraped.
WORKER_METRICS_BASE = METRICS_PORTS["worker"]


class Settings(BaseSettings):
    """What every agentq service is configured by (the `AGENTQ_*` variables of the contract)."""

    model_config = SettingsConfigDict(env_prefix="AGENTQ_", extra="ignore")

    amqp_url: str = "amqp://guest:guest@localhost:5672/"
    redis_url: str = "redis://localhost:6379/0"
    database_url: str = "sqlite:///agentq.db"
    namespace: str = "agentq"
    config: Path | None = None
    api_keys: str = ""  # bare keys (admin) and `tenant:sha256:<hex>` digests, comma-separated
    api_keys_file: Path | None = None  # a TOML file with an [api_keys] table, as agentq.toml
    dashboard_password: str = ""
    secret_key: str = ""  # the dashboard's session secret; empty = random, kept in the database

    ingest_port: int = DEFAULT_PORTS["ingest"]
    dashboard_port: int = DEFAULT_PORTS["dashboard"]
    metrics_port: int = 0  # 0 = the service's default port; -1 = no metrics endpoint
    # Where the HTTP servers listen: this host only unless asked (the image says 0.0.0.0).
    ingest_host: str = "127.0.0.1"
    dashboard_host: str = "127.0.0.1"
    metrics_host: str = "127.0.0.1"
    max_body_bytes: int = 1024 * 1024
    # The largest JSONL input file ingest's Batch API (POST /v1/files) takes; kept in SQL.
    batch_file_max_bytes: int = Field(default=50 * 1024 * 1024, ge=1)
    max_backlog: int = 100_000  # ingest answers 429 past this many ready tasks in agentq.tasks
    worker_concurrency: int = 32
    worker_prefetch: int = 0  # 0 = same as concurrency: waiting tasks stay visible in RabbitMQ
    # A tenant lane nothing was published to for this long is no longer consumed (it wakes
    # with the tenant's next task; a retry or budget hold counts as use when it lands).
    lane_idle_s: float = Field(default=600.0, ge=1.0)
    # ... and its queue is deleted after this long (it is declared again with the next task).
    lane_retire_s: float = Field(default=3600.0, ge=1.0)
    max_attempts: int = 5  # the task's own errors (400, 5xx, timeouts); waits spend none
    # How long a task may wait for provider capacity (429s, holds) from its first such wait,
    # across retries, before it fails `rate_limited`.
    rate_limit_wait_s: float = Field(default=3600.0, gt=0)
    retry_base_ms: int = 500
    retry_max_ms: int = 30_000
    llm_timeout_s: float = 120.0
    cache_ttl_s: int = 7 * 24 * 3600
    log_level: str = "INFO"
    # An event whose payload does not match its model (services.common.events) raises
    # instead of being logged: for tests and development, never needed in production.
    strict_events: bool = False
    # Where the built-in tier table finds the simulated provider (no key, no OPENAI_BASE_URL).
    mockllm_url: str = f"http://127.0.0.1:{DEFAULT_PORTS['mockllm']}/v1"

    openai_api_key: str = Field(default="", validation_alias="OPENAI_API_KEY")
    openai_base_url: str = Field(default="", validation_alias="OPENAI_BASE_URL")

    @field_validator("api_keys_file", mode="before")
    @classmethod
    def _empty_is_no_file(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("namespace")
    @classmethod
    def _namespace_is_a_name(cls, value: str) -> str:
        if not value or any(c in value for c in " #*/"):
            raise ValueError("AGENTQ_NAMESPACE must be a non-empty name without spaces, #, * or /")
        return value

    @model_validator(mode="after")
    def _lanes_retire_after_idling(self) -> Settings:
        if self.lane_retire_s < self.lane_idle_s:
            raise ValueError("AGENTQ_LANE_RETIRE_S must be at least AGENTQ_LANE_IDLE_S")
        return self

    @property
    def api_key_set(self) -> frozenset[str]:
        """Return the keys AGENTQ_API_KEYS holds in clear (digest entries are not keys)."""
        from services.common.api_keys import plain_keys

        return frozenset(plain_keys(self.api_keys))

    def key_table(self) -> KeyTable:
        """Load every API key: AGENTQ_API_KEYS, the tier table's and AGENTQ_API_KEYS_FILE's."""
        from services.common.api_keys import key_table, read_keys_file

        tables = [self.tier_table().api_keys]
        if self.api_keys_file is not None:
            tables.append(read_keys_file(self.api_keys_file))
        return key_table(self.api_keys, *tables)

    def tier_table(self) -> AgentqConfig:
        """Load the tier table in force for these settings."""
        from services.common.config import load_config

        return load_config(self.config_path(), self.openai_api_key, self.openai_base_url,
                           self.mockllm_url)

    def config_path(self) -> Path | None:
        """Return the tier-table file in force: AGENTQ_CONFIG, else ./agentq.toml if present."""
        if self.config is not None:
            return self.config
        local = Path("agentq.toml")
        return local if local.exists() else None
