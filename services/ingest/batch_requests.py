"""Turn the lines of an OpenAI batch input file into agentq tasks (pure).

A line's body is a chat completion request. It becomes a `Task` like any other: the router
picks its tier (a body `model` naming a tier, `cheap`/`standard`/`premium`, is a tier hint;
any other model name leaves the choice to agentq), the cache, limiter and budgets apply,
and the task is deferrable with the batch's completion window as its deadline.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from services.common.batch_format import (
    MAX_BATCH_LINES,
    BatchFileError,
    BatchLine,
    first_problem,
    parse_batch_input,
)
from services.common.models import TIERS, Task

CHAT_URL = "/v1/chat/completions"
WINDOW_S = {"24h": 24 * 3600}  # the completion windows OpenAI offers
# Body keys agentq honours, or may ignore without changing the answer's shape; any other
# key (tools, response_format, stream, ...) is refused rather than silently dropped.
BODY_KEYS = frozenset({"model", "messages", "max_tokens", "max_completion_tokens",
                       "temperature", "n", "user", "metadata", "store", "seed"})


@dataclass(frozen=True)
class BatchSpec:
    """What every task of one batch shares."""

    batch_id: str
    tenant: str
    kind: str
    created_at: float
    completion_window: str = "24h"

    @property
    def deadline(self) -> str:
        """Return the batch's end of window as an ISO time (fixed at creation, so a line
        accepted late does not push its own deadline back)."""
        ends = self.created_at + WINDOW_S[self.completion_window]
        return datetime.fromtimestamp(ends, UTC).isoformat(timespec="seconds")


# Used at upload, before any batch exists: the checks do not depend on these values.
_CHECKING = BatchSpec("batch_check", "default", "chat", 0.0)


def task_id(batch_id: str, index: int) -> str:
    """Return the task id of a batch's line (0-based, in file order): stable, so accepting
    a line twice is one task."""
    return f"{batch_id}-{index}"


def line_task(line: BatchLine, index: int, spec: BatchSpec) -> Task:
    """Return the task of one line, or raise BatchFileError naming the body's field."""
    body = line.body
    unknown = sorted(set(body) - BODY_KEYS)
    if unknown:
        raise BatchFileError(f"body.{unknown[0]} is not supported by agentq's Batch API.",
                             f"body.{unknown[0]}", "unsupported_parameter")
    if body.get("n", 1) != 1:
        raise BatchFileError("body.n: agentq answers one choice per request.", "body.n",
                             "invalid_value")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BatchFileError("body.model: a model name is required.", "body.model",
                             "invalid_value")
    fields: dict[str, Any] = {
        "id": task_id(spec.batch_id, index), "tenant": spec.tenant, "kind": spec.kind,
        "messages": _messages(body.get("messages")),
        "tier": model if model in TIERS else None,
        "max_tokens": body.get("max_completion_tokens", body.get("max_tokens")),
        "metadata": {"batch": spec.batch_id, "custom_id": line.custom_id},
        "deadline": spec.deadline, "deferrable": True,
    }
    if "temperature" in body:
        fields["temperature"] = body["temperature"]
    try:
        return Task.model_validate(fields)
    except ValidationError as exc:
        param, message = first_problem(exc)
        raise BatchFileError(f"body.{message}", f"body.{param}" if param else "body",
                             "invalid_value") from None


def _messages(value: object) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise BatchFileError("body.messages: a non-empty list of messages is required.",
                             "body.messages", "invalid_value")
    return [_message(i, item) for i, item in enumerate(value)]


def _message(index: int, item: object) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise BatchFileError(f"body.messages.{index}: expected an object.",
                             f"body.messages.{index}", "invalid_value")
    content = item.get("content")
    if isinstance(content, list):  # content parts: agentq answers text alone
        if not all(isinstance(p, dict) and p.get("type") == "text"
                   and isinstance(p.get("text"), str) for p in content):
            param = f"body.messages.{index}.content"
            raise BatchFileError(f"{param}: only text parts are supported.", param,
                                 "invalid_value")
        content = "\n".join(part["text"] for part in content)
    return {**item, "content": content}


def check_input(content: bytes, max_lines: int = MAX_BATCH_LINES) -> list[BatchLine]:
    """Return the lines of an uploaded input file once every one would make a task, or
    raise BatchFileError naming the first bad line and its field."""
    return parse_batch_input(content, urls=(CHAT_URL,), max_lines=max_lines,
                             check=lambda line: line_task(line, 0, _CHECKING))


def batch_tasks(content: bytes, spec: BatchSpec) -> list[tuple[BatchLine, Task]]:
    """Return each line of a checked input file with the task it becomes."""
    return [(line, line_task(line, index, spec))
            for index, line in enumerate(check_input(content))]
