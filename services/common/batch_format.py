"""OpenAI's batch file formats: check an input file line by line, shape output records.

Shared by the simulated provider (mockllm) and agentq's own Batch API (ingest), so both
refuse a bad file the same way: the first bad line names its number and the field (`param`).
Pure functions over bytes and dicts; each caller turns `BatchFileError` into its own 400.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

BATCH_URLS = ("/v1/chat/completions", "/v1/embeddings")
MAX_BATCH_LINES = 50_000  # OpenAI's bound on requests per batch

# What a line that never ran gets in the error file, by the batch's end status.
NOT_RUN = {
    "expired": (
        "batch_expired",
        "This request could not be executed before the completion window expired.",
    ),
    "cancelled": (
        "batch_cancelled",
        "This request was not executed because the batch was cancelled.",
    ),
}


class BatchFileError(ValueError):
    """A batch input file refused: the message names the line, `param` the field."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class BatchLine(BaseModel):
    """Validate one request line of a batch input file."""

    model_config = ConfigDict(strict=True, frozen=True)

    custom_id: str = Field(min_length=1, max_length=512)
    method: Literal["POST"]
    url: Literal["/v1/chat/completions", "/v1/embeddings"]
    body: dict[str, Any]


def first_problem(exc: ValidationError) -> tuple[str | None, str]:
    """Return the dotted field and the message of a pydantic error's first problem."""
    first = exc.errors()[0]
    param = ".".join(str(part) for part in first["loc"]) or None
    return param, f"{param}: {first['msg']}" if param else first["msg"]


def parse_batch_input(content: bytes, urls: Collection[str] = BATCH_URLS,
                      max_lines: int = MAX_BATCH_LINES,
                      check: Callable[[BatchLine], object] | None = None) -> list[BatchLine]:
    """Return the request lines of a batch input file, or raise BatchFileError naming the line.

    `urls` narrows the endpoints a line may name (agentq's ingest answers chat only);
    `check` is the caller's own check of a line, whose BatchFileError gets the line number.
    """
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        raise BatchFileError("The batch input file must be UTF-8 encoded JSONL.", "file") from None
    lines: list[BatchLine] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue  # a trailing newline or blank separator line carries no request
        line = _parse_line(number, raw, urls)
        if check is not None:
            _check_line(number, line, check)
        if line.custom_id in seen:
            message = (
                f"Line {number}: duplicate custom_id {line.custom_id!r} (first on line "
                f"{seen[line.custom_id]}); each request in a batch needs a unique custom_id."
            )
            raise BatchFileError(message, "custom_id", "duplicate_custom_id")
        seen[line.custom_id] = number
        lines.append(line)
    if not lines:
        raise BatchFileError("The batch input file holds no requests.", "file", "empty_file")
    if len(lines) > max_lines:
        message = f"A batch holds at most {max_lines} requests, this file has {len(lines)}."
        raise BatchFileError(message, "file", "too_many_requests")
    return lines


def _parse_line(number: int, raw: str, urls: Collection[str]) -> BatchLine:
    try:
        document = json.loads(raw)
    except ValueError:
        raise BatchFileError(f"Line {number}: not valid JSON.", "file", "invalid_json") from None
    if not isinstance(document, dict):
        raise BatchFileError(f"Line {number}: expected a JSON object.", "file", "invalid_json")
    try:
        line = BatchLine.model_validate(document)
    except ValidationError as exc:
        param, message = first_problem(exc)
        raise BatchFileError(f"Line {number}: {message}", param, "invalid_value") from None
    if line.url not in urls:
        message = f"Line {number}: url {line.url!r} is not served here; use one of {list(urls)}."
        raise BatchFileError(message, "url", "invalid_value")
    return line


def _check_line(number: int, line: BatchLine, check: Callable[[BatchLine], object]) -> None:
    try:
        check(line)
    except BatchFileError as exc:
        raise BatchFileError(f"Line {number}: {exc.message}", exc.param, exc.code) from None


def output_record(record_id: str, custom_id: str, status_code: int, request_id: str,
                  body: dict[str, Any]) -> dict[str, Any]:
    """Return one line of a batch's output or error file for a request that was answered."""
    return {
        "id": record_id,
        "custom_id": custom_id,
        "response": {"status_code": status_code, "request_id": request_id, "body": body},
        "error": None,
    }


def not_run_record(record_id: str, custom_id: str, status: str) -> dict[str, Any]:
    """Return the error-file line of a request the batch never ran (expired or cancelled)."""
    code, message = NOT_RUN[status]
    return {"id": record_id, "custom_id": custom_id, "response": None,
            "error": {"code": code, "message": message}}


def jsonl(records: list[dict[str, Any]]) -> bytes:
    """Encode records as JSONL, one per line."""
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records).encode()
