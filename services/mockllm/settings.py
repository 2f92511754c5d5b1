"""Configure the simulated provider: start-up settings and run-time changes via /control."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.settings import DEFAULT_PORTS

# The settings POST /control may change; host and port of a running server stay put.
TUNABLE = (
    "rpm",
    "tpm",
    "latency_ms",
    "jitter_ms",
    "error_rate",
    "seed",
    "batch_completion_s",
    "batch_error_rate",
    "batch_expire",
)
MAX_BATCH_COMPLETION_S = 24 * 3600.0  # OpenAI's only completion window


class MockSettings(BaseSettings):
    """Hold the simulated provider's configuration (AGENTQ_MOCK_* variables)."""

    model_config = SettingsConfigDict(env_prefix="AGENTQ_MOCK_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_PORTS["mockllm"], ge=0, le=65535)
    rpm: int = Field(default=0, ge=0, description="requests per minute; 0 = unlimited")
    tpm: int = Field(default=0, ge=0, description="tokens per minute; 0 = unlimited")
    latency_ms: float = Field(default=0.0, ge=0, description="mean simulated latency")
    jitter_ms: float = Field(default=0.0, ge=0, description="standard deviation of latency")
    error_rate: float = Field(default=0.0, ge=0, le=1, description="share of injected 500s")
    seed: int = 0
    # A batch is judged by these as they stand when it is created, so changing them later
    # never rewrites a batch already in flight.
    batch_completion_s: float = Field(
        default=2.0, ge=0, le=MAX_BATCH_COMPLETION_S, description="time a batch takes to end"
    )
    batch_error_rate: float = Field(default=0.0, ge=0, le=1, description="share of failed lines")
    batch_expire: bool = Field(default=False, description="batches end expired, half answered")


class FailNext(BaseModel):
    """Make the next `count` chat requests fail with `status`."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    count: int = Field(ge=0)
    status: Literal[429, 500, 503] = 500
    retry_after: float = Field(default=1.0, gt=0, le=3600)


class ControlUpdate(BaseModel):
    """Validate a POST /control body; every field is optional."""

    # Strict so that "5" or true is refused rather than quietly coerced in a test.
    model_config = ConfigDict(strict=True, extra="forbid")

    rpm: int | None = Field(default=None, ge=0)
    tpm: int | None = Field(default=None, ge=0)
    latency_ms: float | None = Field(default=None, ge=0)
    jitter_ms: float | None = Field(default=None, ge=0)
    error_rate: float | None = Field(default=None, ge=0, le=1)
    seed: int | None = None
    batch_completion_s: float | None = Field(default=None, ge=0, le=MAX_BATCH_COMPLETION_S)
    batch_error_rate: float | None = Field(default=None, ge=0, le=1)
    batch_expire: bool | None = None
    fail_next: FailNext | None = None
    retry_after: float | None = Field(default=None, gt=0, le=3600)

    @model_validator(mode="after")
    def _place_retry_after(self) -> ControlUpdate:
        # A top-level retry_after is accepted as shorthand for fail_next.retry_after.
        if self.retry_after is None:
            return self
        if self.fail_next is None:
            raise ValueError("retry_after applies to fail_next, which is missing")
        if "retry_after" not in self.fail_next.model_fields_set:
            self.fail_next = self.fail_next.model_copy(update={"retry_after": self.retry_after})
        return self

    def setting_changes(self) -> dict[str, int | float | bool]:
        """Return the settings this update changes."""
        return self.model_dump(include=set(TUNABLE), exclude_none=True)
