"""Action values that more than one service's decisions return (the router's `decide.py`,
the worker's `actions.py`): frozen, so a decision, once made, is not changed on the way."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Reject:
    """The message can never be processed: park it in `rejected` with the reason."""

    reason: str


@dataclass(frozen=True)
class Emit:
    """Publish a telemetry event about the task."""

    type: str
    tenant: str
    task_id: str
    data: Mapping[str, Any] = field(default_factory=dict)
