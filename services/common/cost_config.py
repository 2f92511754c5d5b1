"""The cost-control sections of the tier table: complexity, cache, cascade, breaker, budgets."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ComplexityThresholds(BaseModel):
    """Complexity scores (0..1) from which a task goes to the standard or premium tier."""

    model_config = ConfigDict(extra="forbid")

    standard_from: float = Field(default=0.30, ge=0)
    premium_from: float = Field(default=0.55, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> ComplexityThresholds:
        if self.premium_from < self.standard_from:
            raise ValueError("premium_from must not be below standard_from")
        return self


class ComplexityConfig(ComplexityThresholds):
    """Thresholds for kinds without a rule, with per-kind overrides."""

    kinds: dict[str, ComplexityThresholds] = Field(default_factory=dict)

    def for_kind(self, kind: str) -> ComplexityThresholds:
        return self.kinds.get(kind, self)


class CacheConfig(BaseModel):
    """TTLs and the semantic cache: which kinds use it, how similar is similar enough."""

    model_config = ConfigDict(extra="forbid")

    exact_ttl_s: int | None = Field(default=None, gt=0)  # None = AGENTQ_CACHE_TTL_S
    semantic: bool = True
    semantic_ttl_s: int = Field(default=24 * 3600, gt=0)
    # Cosine similarity a cached prompt needs to answer, per kind; kinds not listed use
    # `semantic_default_threshold`, and None there keeps them out of the semantic cache.
    semantic_thresholds: dict[str, float] = Field(default_factory=lambda: {
        "classify": 0.70, "extract": 0.85, "summarize": 0.90, "chat": 0.85})
    semantic_default_threshold: float | None = None
    embedder: Literal["local", "sentence", "provider"] = "local"
    embedder_model: str = ""  # sentence: model directory; provider: "provider/model"
    dimensions: int = Field(default=256, ge=16, le=4096)
    verify_share: float = Field(default=0.02, ge=0, le=1)  # semantic hits re-asked for real
    inflight_wait_s: float = Field(default=60.0, gt=0)  # dedup: how long twins wait

    def semantic_threshold(self, kind: str) -> float | None:
        """Return the similarity a kind's semantic hit needs, or None if it never uses one."""
        if not self.semantic:
            return None
        return self.semantic_thresholds.get(kind, self.semantic_default_threshold)


class CascadeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    max_escalations: int = Field(default=2, ge=0, le=2)


class BreakerConfig(BaseModel):
    """Open a model's breaker after `failures` within `window_s`; probe after `cooldown_s`."""

    model_config = ConfigDict(extra="forbid")

    failures: int = Field(default=5, ge=1)
    window_s: float = Field(default=30.0, gt=0)
    cooldown_s: float = Field(default=20.0, gt=0)


class BudgetConfig(BaseModel):
    """A tenant's spend limits in US dollars; None = no such limit."""

    model_config = ConfigDict(extra="forbid")

    daily_soft_usd: float | None = Field(default=None, ge=0)
    daily_hard_usd: float | None = Field(default=None, ge=0)
    monthly_soft_usd: float | None = Field(default=None, ge=0)
    monthly_hard_usd: float | None = Field(default=None, ge=0)
    hard_action: Literal["hold", "fail"] = "hold"
    hold_s: float = Field(default=60.0, gt=0)  # held tasks are looked at again after this

