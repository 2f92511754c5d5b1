"""What a self-hosted OpenAI-compatible model would cost at the observed volume (pure).

The user enters a GPU's hourly price, how many GPUs one copy (replica) of the model needs and
how many tokens per second one GPU serves (prompt + completion, as vLLM's or Ollama's
benchmarks report them for the model). The GPUs run around the clock whether busy or not, so
the monthly cost is a step function of the volume: one more replica each time the tokens of a
day no longer fit on the ones there are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from services.dashboard.snapshot import HOURS_PER_MONTH  # as the projected spend counts

DAYS_PER_MONTH = HOURS_PER_MONTH / 24
SECONDS_PER_DAY = 86_400.0


class PlanError(ValueError):
    """A figure that cannot be used; names the setting it came from."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _finite(field: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PlanError(field, f"must be a finite number (got {value!r})")
    return float(value)


def non_negative(field: str, value: float) -> float:
    """Return `value` as a float, or raise PlanError naming `field` (negative, NaN, ∞)."""
    if _finite(field, value) < 0:
        raise PlanError(field, f"must be 0 or more (got {value:g})")
    return float(value)


@dataclass(frozen=True)
class GpuPlan:
    """The user's GPU price and capacity (the field names are the settings' keys)."""

    self_host_gpu_hour_usd: float
    self_host_gpus: int
    self_host_tokens_per_s: float

    def __post_init__(self) -> None:
        non_negative("self_host_gpu_hour_usd", self.self_host_gpu_hour_usd)
        gpus = _finite("self_host_gpus", self.self_host_gpus)
        if gpus < 1 or not gpus.is_integer():
            raise PlanError("self_host_gpus", f"must be a whole number of 1 or more (got {gpus:g})")
        if _finite("self_host_tokens_per_s", self.self_host_tokens_per_s) <= 0:
            raise PlanError("self_host_tokens_per_s",
                            f"must be more than 0 tokens/s (got {self.self_host_tokens_per_s:g}):"
                            " a GPU that serves nothing can never replace the API")

    @property
    def replica_tokens_per_day(self) -> float:
        return self.self_host_gpus * self.self_host_tokens_per_s * SECONDS_PER_DAY

    @property
    def replica_monthly_usd(self) -> float:
        return self.self_host_gpus * self.self_host_gpu_hour_usd * HOURS_PER_MONTH


def plan_from_settings(values: Mapping[str, float | bool | str]) -> GpuPlan | None:
    """Return the plan of the stored settings, or None while no GPU price is entered."""
    price = float(values["self_host_gpu_hour_usd"])
    if price <= 0:
        return None
    return GpuPlan(price, int(float(values["self_host_gpus"])),
                   float(values["self_host_tokens_per_s"]))


@dataclass(frozen=True)
class Volume:
    """The observed traffic, per day: tasks, tokens (prompt + completion) and API spend."""

    tasks_per_day: float
    tokens_per_day: float
    api_usd_per_day: float

    def __post_init__(self) -> None:
        for name in ("tasks_per_day", "tokens_per_day", "api_usd_per_day"):
            non_negative(name, getattr(self, name))

    @classmethod
    def observed(cls, tasks: float, tokens: float, cost_usd: float, span_s: float) -> Volume:
        """Return the daily rates of what a window of `span_s` seconds saw."""
        if _finite("span_s", span_s) <= 0:
            raise PlanError("span_s", f"must be more than 0 s (got {span_s:g})")
        per_day = SECONDS_PER_DAY / span_s
        return cls(tasks * per_day, tokens * per_day, cost_usd * per_day)

    @property
    def api_monthly_usd(self) -> float:
        return self.api_usd_per_day * DAYS_PER_MONTH


def replicas_needed(plan: GpuPlan, tokens_per_day: float) -> int:
    """Return how many replicas serve `tokens_per_day` (always at least one)."""
    non_negative("tokens_per_day", tokens_per_day)
    return max(1, math.ceil(tokens_per_day / plan.replica_tokens_per_day))


def self_hosted_monthly_usd(plan: GpuPlan, tokens_per_day: float) -> float:
    """Return the monthly GPU bill for the replicas `tokens_per_day` needs."""
    return replicas_needed(plan, tokens_per_day) * plan.replica_monthly_usd


def break_even_tasks_per_day(plan: GpuPlan, volume: Volume) -> float | None:
    """Return the daily tasks from which the API costs as much as self-hosting them.

    None when there is no such volume: no traffic to price a task by, free answers, or a
    fully busy replica that costs more than the API answers it could serve (then every
    further replica is as dear, so no volume ever breaks even). 0 when the GPUs are free.
    """
    if volume.tasks_per_day <= 0 or volume.api_usd_per_day <= 0:
        return None
    cost_per_task = volume.api_usd_per_day / volume.tasks_per_day
    tokens_per_task = volume.tokens_per_day / volume.tasks_per_day
    if tokens_per_task > 0:
        busy_replica_api_monthly = (plan.replica_tokens_per_day / tokens_per_task
                                    * cost_per_task * DAYS_PER_MONTH)
        if busy_replica_api_monthly < plan.replica_monthly_usd:
            return None
    # Within the first replica the GPU bill is flat, so the API's bill meets it there.
    return plan.replica_monthly_usd / (cost_per_task * DAYS_PER_MONTH)


@dataclass(frozen=True)
class Comparison:
    """Self-hosting against the API at the observed volume, per month."""

    self_hosted_monthly_usd: float
    api_monthly_usd: float
    replicas: int
    gpus: int
    gpu_busy_pct: float  # share of the replicas' token capacity the volume uses
    break_even_tasks_per_day: float | None
    tasks_per_day: float

    @property
    def cheaper(self) -> str:
        """Return which side costs less now: "self-hosted", "api" or "equal"."""
        if math.isclose(self.self_hosted_monthly_usd, self.api_monthly_usd, rel_tol=1e-9):
            return "equal"
        return "self-hosted" if self.self_hosted_monthly_usd < self.api_monthly_usd else "api"


def compare(plan: GpuPlan, volume: Volume) -> Comparison:
    """Return the monthly cost of each side and the break-even volume."""
    replicas = replicas_needed(plan, volume.tokens_per_day)
    capacity = replicas * plan.replica_tokens_per_day
    return Comparison(
        self_hosted_monthly_usd=replicas * plan.replica_monthly_usd,
        api_monthly_usd=volume.api_monthly_usd,
        replicas=replicas, gpus=replicas * plan.self_host_gpus,
        gpu_busy_pct=volume.tokens_per_day / capacity * 100,
        break_even_tasks_per_day=break_even_tasks_per_day(plan, volume),
        tasks_per_day=volume.tasks_per_day)
