"""Hold uploaded and generated files in memory, and validate a batch input file.

A batch input is JSONL, one request per line. It is checked line by line when uploaded, so
a bad file is refused at once with the line and the field named, not discovered later.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Literal

from services.common.batch_format import (
    BATCH_URLS,
    MAX_BATCH_LINES,
    BatchFileError,
    BatchLine,
    jsonl,
)
from services.common.batch_format import parse_batch_input as parse_lines
from services.mockllm.protocol import InvalidRequest

__all__ = ["BATCH_URLS", "MAX_BATCH_LINES", "BatchLine", "FileStore", "StoredFile", "jsonl",
           "parse_batch_input"]  # the line checks live in services.common.batch_format

Purpose = Literal["batch", "batch_output"]


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
        return parse_lines(content)
    except BatchFileError as exc:
        raise InvalidRequest(exc.message, exc.param, exc.code) from None


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

