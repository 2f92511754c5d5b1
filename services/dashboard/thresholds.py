"""The settings a person edits (alert thresholds, the GPU figures of the self-hosting
comparison): their keys, defaults and validation (pure)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlparse

Kind = Literal["number", "bool", "url"]
Value = float | bool | str


class ThresholdError(ValueError):
    """A setting value that cannot be stored; names the field for the form and the API."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Spec:
    """One editable setting."""

    key: str
    kind: Kind
    default: Value
    label: str
    unit: str = ""
    maximum: float | None = None
    group: str = ""
    positive: bool = False  # 0 is refused too (a throughput, a GPU count)
    whole: bool = False  # a count: no fractions


@dataclass(frozen=True)
class RuleInfo:
    """One alert rule: its key (= its threshold's key), title and what the value means."""

    key: str
    title: str
    unit: str
    default_threshold: float
    default_for_s: float
    help: str


RULES: tuple[RuleInfo, ...] = (
    RuleInfo("queue_depth", "Queue depth", "messages", 1000, 60,
             "Ready messages in the busiest pipeline queue."),
    RuleInfo("queue_growth", "Queue growth", "messages/min", 200, 300,
             "The pipeline backlog grows faster than this: processing cannot keep up."),
    RuleInfo("cost_per_hour", "Cost per hour", "USD/h", 10, 300,
             "Spend over the last hour, or more than the spike factor × its 24 h baseline."),
    RuleInfo("error_rate", "Error rate", "%", 5, 120,
             "Failed tasks among those finished in the last 5 minutes."),
    RuleInfo("latency_p95", "p95 latency", "ms", 30_000, 300,
             "95th percentile of end-to-end task latency over the last 5 minutes."),
    RuleInfo("rate_limited", "Provider 429s", "per min", 30, 120,
             "Rate-limit answers from providers, per minute over the last 5 minutes."),
    RuleInfo("dead_letters", "Dead letters", "messages", 0, 0,
             "Messages waiting in the dead-letter queue."),
    RuleInfo("semantic_wrong_hits", "Semantic wrong hits", "%", 2, 300,
             "Sampled semantic-cache hits whose fresh answer disagreed (cache.verify), over "
             "the last 5 minutes: the live share of wrong answers the cache served."),
    RuleInfo("broker_unreachable", "Broker unreachable", "s", 30, 0,
             "Seconds since the collector last read a queue depth from RabbitMQ; ingest "
             "answers 503 meanwhile. Keep it above the sample interval (5 s)."),
)
RULE_KEYS: tuple[str, ...] = tuple(r.key for r in RULES)


def _rule_specs(rule: RuleInfo) -> tuple[Spec, ...]:
    maximum = 100.0 if rule.unit == "%" else None
    return (Spec(rule.key, "number", float(rule.default_threshold), "Threshold", rule.unit,
                 maximum, rule.key),
            Spec(f"{rule.key}_for_s", "number", float(rule.default_for_s), "For", "s",
                 None, rule.key),
            Spec(f"{rule.key}_enabled", "bool", True, "Enabled", "", None, rule.key))


SPECS: tuple[Spec, ...] = (
    *(spec for rule in RULES for spec in _rule_specs(rule)),
    Spec("cost_spike_factor", "number", 3.0, "Cost spike factor", "× 24 h baseline (0 = off)"),
    Spec("hysteresis", "number", 0.1, "Hysteresis", "fraction below the threshold to resolve",
         0.9),
    Spec("webhook_url", "url", "", "Webhook URL", "Slack-compatible; empty = none"),
    # Not alert settings: the self-hosting comparison on the overview (services.dashboard
    # .self_hosting), stored alongside so they are edited, checked and served the same way.
    Spec("self_host_gpu_hour_usd", "number", 0.0, "GPU price", "USD per GPU-hour; 0 = not set",
         group="self_hosting"),
    Spec("self_host_gpus", "number", 1.0, "GPUs per replica",
         "GPUs one copy of the model needs", group="self_hosting", positive=True, whole=True),
    Spec("self_host_tokens_per_s", "number", 1000.0, "Throughput per GPU",
         "tokens/s, prompt + completion", group="self_hosting", positive=True),
)
SPEC_BY_KEY: dict[str, Spec] = {s.key: s for s in SPECS}
DEFAULTS: dict[str, Value] = {s.key: s.default for s in SPECS}


def parse(key: str, raw: Any) -> Value:
    """Return a setting's value from form text or JSON, or raise ThresholdError."""
    spec = SPEC_BY_KEY.get(key)
    if spec is None:
        raise ThresholdError(key, f"unknown setting {key!r}")
    if spec.kind == "bool":
        return _parse_bool(key, raw)
    if spec.kind == "url":
        return _parse_url(key, raw)
    return _parse_number(spec, raw)


def _parse_number(spec: Spec, raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise ThresholdError(spec.key, "must be a number")
    try:
        value = float(raw.strip()) if isinstance(raw, str) else float(raw)
    except ValueError:
        shown = str(raw).strip()
        raise ThresholdError(spec.key, f"must be a number, not {shown!r}" if shown
                             else "must be a number (it is empty)") from None
    if not math.isfinite(value):
        raise ThresholdError(spec.key, "must be a finite number")
    if value < 0:
        raise ThresholdError(spec.key, f"must be 0 or more (got {value:g})")
    if spec.positive and value == 0:
        raise ThresholdError(spec.key, "must be more than 0")
    if spec.whole and not value.is_integer():
        raise ThresholdError(spec.key, f"must be a whole number (got {value:g})")
    if spec.maximum is not None and value > spec.maximum:
        raise ThresholdError(spec.key, f"must be at most {spec.maximum:g} (got {value:g})")
    return value


def _parse_bool(key: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in ("true", "on", "1", "yes", "y"):
        return True
    if isinstance(raw, str) and raw.strip().lower() in ("false", "off", "0", "no", "n", ""):
        return False
    raise ThresholdError(key, "must be true or false")


def _parse_url(key: str, raw: Any) -> str:
    if not isinstance(raw, str):
        raise ThresholdError(key, "must be a URL string")
    url = raw.strip()
    if not url:
        return ""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ThresholdError(key, "must be an http:// or https:// URL, or empty")
    if len(url) > 2000:
        raise ThresholdError(key, "is too long (2000 characters at most)")
    return url


def validate(updates: Mapping[str, Any]) -> dict[str, Value]:
    """Check every given setting; return them parsed or raise on the first bad one."""
    return {key: parse(key, raw) for key, raw in updates.items()}


def merged(stored: Mapping[str, Any]) -> dict[str, Value]:
    """Return the defaults overlaid with the stored values that are still valid."""
    values = dict(DEFAULTS)
    for key, raw in stored.items():
        try:
            values[key] = parse(key, raw)
        except ThresholdError:
            continue  # a key from an older version, or a hand-edited row: keep the default
    return values


@dataclass(frozen=True)
class RuleConfig:
    """What the state machine needs of one rule."""

    threshold: float
    for_s: float
    enabled: bool


def rule_configs(values: Mapping[str, Value]) -> dict[str, RuleConfig]:
    """Return each rule's threshold, duration and switch from a settings mapping."""
    return {key: RuleConfig(threshold=float(values[key]), for_s=float(values[f"{key}_for_s"]),
                            enabled=bool(values[f"{key}_enabled"]))
            for key in RULE_KEYS}
