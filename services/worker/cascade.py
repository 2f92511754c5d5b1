"""Check an answer against its task's validator and pick the tier to escalate to: pure."""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, Field

from services.common.answer_checks import fullmatch, no_network_registry
from services.common.models import TIERS, CallCost, Tier, Usage, Validator

_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL | re.IGNORECASE)
_LABEL_TRIM = " \t\r\n'\"`.!"


def normalise_label(text: str) -> str:
    return text.strip(_LABEL_TRIM).lower()


def parse_json_answer(text: str) -> Any:
    """Parse a JSON answer, tolerating a ```json fence around it; raise ValueError if not JSON."""
    stripped = text.strip()
    fenced = _FENCE.match(stripped)
    return json.loads(fenced.group(1) if fenced else stripped)


def check_answer(validator: Validator | None, text: str) -> str | None:
    """Return why `text` fails the validator (e.g. "labels"), or None when it passes."""
    if validator is None:
        return None
    if validator.labels is not None:
        allowed = {normalise_label(label) for label in validator.labels}
        if normalise_label(text) not in allowed:
            return "labels"
    if validator.regex is not None:
        try:
            if not fullmatch(validator.regex, text.strip()):
                return "regex"
        except TimeoutError:
            return "regex (timed out)"
    if validator.json_schema is not None:
        import jsonschema

        try:
            answer = parse_json_answer(text)
        except ValueError:
            return "json"
        schema = validator.json_schema
        try:
            checker = jsonschema.validators.validator_for(schema)(
                schema, registry=no_network_registry())
            error = jsonschema.exceptions.best_match(checker.iter_errors(answer))
        except Exception:  # a schema that cannot be applied fails the check, never the task
            return "json_schema (unusable schema)"
        if error is not None:
            return "json_schema"
    return None


def next_tier(tier: str, ceiling: Tier | None, escalations: int,
              max_escalations: int) -> Tier | None:
    """Return the tier to escalate to, or None at the ceiling or the escalation limit."""
    if escalations >= max_escalations or tier not in TIERS:
        return None
    rank = TIERS.index(tier)  # type: ignore[arg-type]
    top = TIERS.index(ceiling) if ceiling is not None else len(TIERS) - 1
    return TIERS[rank + 1] if rank + 1 <= top else None


class CascadeState(BaseModel):
    """The calls made so far for a task, carried in a header from tier to tier."""

    calls: list[CallCost] = Field(default_factory=list)

    @property
    def cost_usd(self) -> float:
        return sum(call.cost_usd for call in self.calls)

    @property
    def escalations(self) -> int:
        return len(self.calls)

    def path(self) -> str:
        return "->".join(call.tier for call in self.calls)

    def plus(self, tier: str, model: str, usage: Usage, cost_usd: float,
             valid: bool) -> CascadeState:
        call = CallCost(tier=tier, model=model, usage=usage, cost_usd=cost_usd, valid=valid)
        return CascadeState(calls=[*self.calls, call])

    def to_header(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_header(cls, value: object) -> CascadeState:
        if isinstance(value, bytes):
            value = value.decode()
        return cls.model_validate_json(value) if isinstance(value, str) and value else cls()
