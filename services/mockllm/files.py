"""Hold uploaded and generated files in memory, and validate a batch input file.

A batch input is JSONL, one request per line. It is checked line by line when uploaded, so
a bad file is refused at once with the line and the field named, not discovered later.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.mockllm.protocol import InvalidRequest, from_validation

BATCH_URLS = ("/v1/chat/completions", "/v1/embeddings")
MAX_BATCH_LINES = 50_000  # OpenAI's bound on requests per batch
Purpose = Literal["batch", "batch_output"]


class BatchLine(BaseModel):
    """Validate one request line of a batch input file."""

    model_config = ConfigDict(strict=True, frozen=True)

    custom_id: str = Field(min_length=1, max_length=512)
    method: Literal["POST"]
    url: Literal["/v1/chat/completions", "/v1/embeddings"]
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StoredFile:
    """Hold one file: its bytes and the metadata the Files API shows."""

    id: str
    filename: str
    purpose: Purpose
    content: bytes
    created_at: int

    def to_json(self) -> dict[str, Any]:
        """Return the file object as GET /v1/files/{id} shows it."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
            "expires_at": None,
        }


def parse_batch_input(content: bytes) -> list[BatchLine]:
    """Return the request lines of a batch input file, or raise InvalidRequest naming the line."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("The batch input file must be UTF-8 encoded JSONL.", "file") from None
    lines: list[BatchLine] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue  # a trailing newline or blank separator line carries no request
        line = _parse_line(number, raw)
        if line.custom_id in seen:
            message = (
                f"Line {number}: duplicate custom_id {line.custom_id!r} (first on line "
                f"{seen[line.custom_id]}); each request in a batch needs a unique custom_id."
            )
            raise InvalidRequest(message, "custom_id", "duplicate_custom_id")
        seen[line.custom_id] = number
        lines.append(line)
    if not lines:
        raise InvalidRequest("The batch input file holds no requests.", "file", "empty_file")
    if len(lines) > MAX_BATCH_LINES:
        message = f"A batch holds at most {MAX_BATCH_LINES} requests, this file has {len(lines)}."
        raise InvalidRequest(message, "file", "too_many_requests")
    return lines


def _parse_line(number: int, raw: str) -> BatchLine:
    try:
        document = json.loads(raw)
    except ValueError:
        raise InvalidRequest(f"Line {number}: not valid JSON.", "file", "invalid_json") from None
    if not isinstance(document, dict):
        raise InvalidRequest(f"Line {number}: expected a JSON object.", "file", "invalid_json")
    try:
        return BatchLine.model_validate(document)
    except ValidationError as exc:
        inner = from_validation(exc)
        raise InvalidRequest(f"Line {number}: {inner.message}", inner.param, inner.code) from None


class FileStore:
    """Keep files in memory by id."""

    def __init__(self) -> None:
        self._files: dict[str, StoredFile] = {}

    def add(self, filename: str, purpose: Purpose, content: bytes) -> StoredFile:
        """Store a file under a fresh id and return it."""
        stored = StoredFile(
            id="file-" + os.urandom(12).hex(),
            filename=filename,
            purpose=purpose,
            content=content,
            created_at=int(time.time()),
        )
        self._files[stored.id] = stored
        return stored

    def get(self, file_id: str) -> StoredFile | None:
        """Return a file, or None when there is no such file."""
        return self._files.get(file_id)

    def delete(self, file_id: str) -> bool:
        """Delete a file; say whether it existed."""
        return self._files.pop(file_id, None) is not None


def jsonl(records: list[dict[str, Any]]) -> bytes:
    """Encode records as JSONL, one per line."""
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records).encode()
