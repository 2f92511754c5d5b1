"""Turn a submitted body into Tasks, or into one error that names the offending field."""

from __future__ import annotations

import json
import re
from typing import NoReturn

from pydantic import ValidationError

from services.common.models import Task

MAX_TASKS_PER_REQUEST = 1000
# Deeper documents are refused at the door: every later step (pydantic, the store's JSON,
# the broker's copy) recurses, and some of them stop far short of Python's own limit.
MAX_JSON_DEPTH = 32


class InvalidTask(ValueError):
    """A submission that is not a valid Task; `field` is a dotted path such as `messages.0.role`."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _reject_constant(name: str) -> NoReturn:
    # NaN and Infinity are not JSON; Python's parser would accept them and carry them downstream.
    raise InvalidTask("body", f"{name} is not valid JSON")


def check_size(raw: bytes | str, limit: int) -> None:
    """Refuse a body over `limit` bytes (AGENTQ_MAX_BODY_BYTES), the same for both doors."""
    if limit > 0 and len(raw) > limit:
        raise InvalidTask("body", f"{len(raw)} bytes is over the limit of {limit} bytes")


def decode_json(raw: bytes | str) -> object:
    """Parse a request or message body as strict JSON that every later step can handle."""
    try:
        payload = json.loads(raw, parse_constant=_reject_constant)
    except InvalidTask:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidTask("body", f"not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidTask("body", f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # e.g. an integer past Python's 4,300-digit conversion limit
        raise InvalidTask("body", f"not acceptable JSON: {exc}") from None
    check_shape(payload)
    return payload


def check_shape(payload: object, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Refuse documents nested deeper than `max_depth`, and strings that are not valid
    Unicode (a lone surrogate such as "\\ud800" parses, then fails where it is stored)."""
    stack: list[tuple[object, tuple[str, ...]]] = [(payload, ())]
    while stack:
        value, path = stack.pop()
        if len(path) > max_depth:
            raise InvalidTask(_dotted(path[:1]) or "body",
                              f"nested deeper than {max_depth} levels")
        if isinstance(value, str):
            _check_text(value, path)
        elif isinstance(value, dict):
            for key, item in value.items():
                _check_text(key, path)
                stack.append((item, (*path, key)))
        elif isinstance(value, list):
            stack.extend((item, (*path, str(i))) for i, item in enumerate(value))


def _check_text(text: str, path: tuple[str, ...]) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidTask(_dotted(path) or "body",
                          "holds a lone surrogate: not valid Unicode") from None


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(path)


def _field_of_model_error(message: str) -> str:
    # Model-level checks (e.g. "give either messages or prompt") have no location: name the
    # first Task field the message mentions, so the client still learns what to fix.
    for name in Task.model_fields:
        if re.search(rf"\b{re.escape(name)}\b", message):
            return name
    return "body"


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_\-]+")


def field_path(loc: tuple[int | str, ...]) -> str:
    """Name a field by its path, e.g. `messages.0.content`; a key that could not be read
    back from the dotted form (empty, holding a dot, a space, a quote) is quoted as JSON,
    so `{"": 1}` names `""`, never nothing."""
    return ".".join(str(part) if isinstance(part, int) or _PLAIN_KEY.fullmatch(part)
                    else json.dumps(part) for part in loc)


def _from_validation_error(error: ValidationError) -> InvalidTask:
    first = error.errors(include_url=False)[0]
    message = first["msg"].removeprefix("Value error, ")
    loc = first["loc"]
    field = field_path(loc) if loc else _field_of_model_error(message)
    more = error.error_count() - 1
    if more:
        message += f" (and {more} more error{'s' if more > 1 else ''})"
    return InvalidTask(field, message)


def parse_task(payload: object) -> Task:
    """Validate one decoded JSON value as a Task."""
    if not isinstance(payload, dict):
        raise InvalidTask("body", f"a task must be a JSON object, not {type(payload).__name__}")
    try:
        return Task.model_validate(payload)
    except ValidationError as exc:
        raise _from_validation_error(exc) from None


def parse_tasks(payload: object) -> list[Task]:
    """Validate a JSON object (one task) or a JSON list of tasks; all or nothing."""
    if not isinstance(payload, list):
        return [parse_task(payload)]
    if not payload:
        raise InvalidTask("body", "the list holds no task")
    if len(payload) > MAX_TASKS_PER_REQUEST:
        raise InvalidTask("body", f"at most {MAX_TASKS_PER_REQUEST} tasks per request, "
                                  f"got {len(payload)}")
    tasks = []
    for index, item in enumerate(payload):
        try:
            tasks.append(parse_task(item))
        except InvalidTask as exc:
            field = f"[{index}]" if exc.field == "body" else f"[{index}].{exc.field}"
            raise InvalidTask(field, exc.message) from None
    return tasks
