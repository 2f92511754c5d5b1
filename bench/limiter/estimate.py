"""The TPM estimate's error against the provider's `usage`: how far what the limiter counts
before a call (the worker's own estimate_tokens) is from what the provider reports after it.

Figures per call, each |estimate - usage| / usage: the prompt tokens (the tokenizer and
the chat format's overhead; also as the hand-written approximation, the fallback without
tiktoken, would have estimated them), and the reserved total (prompt + max_tokens, what the pool
holds until the true-up) against the total the provider billed (prompt + completion).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from services.common.config import ModelEntry
from services.common.models import Task
from services.common.tokens import count_messages
from services.worker.throttle import estimate_tokens, reserved_completion


@dataclass(frozen=True)
class Sample:
    """One finished call: the worker's estimate and the provider's usage."""

    estimated_prompt: int
    reserved_total: int
    usage_prompt: int
    usage_total: int
    approx_prompt: int = 0  # the fallback's estimate of the same prompt


@dataclass(frozen=True)
class EstimateError:
    """Mean and p95 of the relative errors over `calls` calls (0.05 = 5 %)."""

    calls: int
    prompt_mean: float
    prompt_p95: float
    total_mean: float
    total_p95: float
    approx_mean: float = 0.0
    approx_p95: float = 0.0


def sample(messages: Sequence[Mapping[str, str]], max_tokens: int | None, model: str,
           usage: Mapping[str, Any]) -> Sample | None:
    """Return the call's estimate beside its usage, as the worker that made it estimated
    (the answering model's tokenizer); None without a usage to compare with."""
    prompt, completion = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    if prompt <= 0:
        return None
    task = Task.model_validate({"messages": list(messages), "max_tokens": max_tokens})
    entry = ModelEntry(provider="bench", model=model, input_per_mtok=0, output_per_mtok=0)
    reserved = estimate_tokens(task, entry)
    return Sample(reserved - reserved_completion(task), reserved, prompt, prompt + completion,
                  count_messages(messages, tokenizer="approx"))


def _p95(values: list[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=20, method="inclusive")[-1]


def summarise(samples: Sequence[Sample]) -> EstimateError | None:
    """Return the errors' mean and p95, or None when no call was compared."""
    if not samples:
        return None
    prompt = [abs(s.estimated_prompt - s.usage_prompt) / s.usage_prompt for s in samples]
    total = [abs(s.reserved_total - s.usage_total) / s.usage_total for s in samples]
    approx = [abs(s.approx_prompt - s.usage_prompt) / s.usage_prompt for s in samples]
    return EstimateError(len(samples), statistics.fmean(prompt), _p95(prompt),
                         statistics.fmean(total), _p95(total), statistics.fmean(approx),
                         _p95(approx))
