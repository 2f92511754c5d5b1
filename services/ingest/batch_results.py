"""Where a batch stands and what its result files hold, from its tasks' stored results (pure).

Stored statuses are `validating` (lines still being accepted as tasks), `in_progress`,
`cancelling`, and the terminal `completed`, `cancelled` and `expired`, written once with the
result files. `finalizing` is what a batch shows while every task has finished (or its
completion window has passed) and its files are being written.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from services.common.batch_format import not_run_record, output_record

TERMINAL = ("completed", "cancelled", "failed", "expired")
# The HTTP status a failed task's line reports, by the Result's error code (else 500).
STATUS_OF_ERROR = {"rate_limited": 429, "budget_exceeded": 429, "invalid_request": 400,
                   "bad_request": 400, "validation_failed": 422}


@dataclass(frozen=True)
class Progress:
    """How far a batch's lines have come: accepted as tasks, and finished."""

    total: int
    accepted: int
    succeeded: int
    failed: int

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed


def is_expired(expires_at: float, now: float) -> bool:
    """Say whether a batch's completion window has passed."""
    return now >= expires_at


def current_status(stored: str, progress: Progress, accepting: bool = False,
                   expired: bool = False) -> str:
    """Return the status a batch shows now, from its stored status and its lines.

    `accepting`: an ingest process holds the batch's lease and may still be accepting a
    line, so a cancelled batch is not finalized under it. `expired`: its completion window
    has passed, so it is finalized as it stands, as OpenAI ends a batch at its window (a
    cancel asked for before goes on: it ends `cancelled`).
    """
    if stored in TERMINAL:
        return stored
    if stored == "cancelling":
        busy = accepting or progress.finished < progress.accepted
        return "cancelling" if busy else "finalizing"
    if expired:
        return "finalizing"
    if progress.accepted < progress.total:
        return "validating"
    return "in_progress" if progress.finished < progress.total else "finalizing"


def final_status(stored: str, progress: Progress | None = None, expired: bool = False) -> str:
    """Return the terminal status a finalizing batch ends in: `expired` when its window
    passed with lines unanswered (they get `batch_expired`), else `cancelled` or
    `completed`."""
    if stored == "cancelling":
        return "cancelled"
    unanswered = progress is not None and progress.finished < progress.total
    return "expired" if expired and unanswered else "completed"


def _record_id(task_id: str) -> str:
    return "batch_req_" + hashlib.sha256(task_id.encode()).hexdigest()[:24]


def completion_body(task_id: str, result: dict[str, Any]) -> dict[str, Any]:
    """Return the chat.completion a succeeded task's Result answers with."""
    usage = result.get("usage") or {}
    prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    return {
        "id": "chatcmpl-" + hashlib.sha256(task_id.encode()).hexdigest()[:24],
        "object": "chat.completion",
        "created": int(result.get("finished_at") or 0),
        "model": result.get("model", ""),
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                     "message": {"role": "assistant", "content": result.get("output", ""),
                                 "refusal": None}}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": prompt + completion},
        "system_fingerprint": None,
    }


def line_record(custom_id: str, task_id: str, status: str | None,
                result: dict[str, Any] | None, batch_status: str) -> dict[str, Any]:
    """Return a finished line's output or error record (a line without a Result, never
    accepted or still running, gets `batch_cancelled` or `batch_expired` by `batch_status`)."""
    if status is None or result is None:
        return not_run_record(_record_id(task_id), custom_id, batch_status)
    if status == "succeeded":
        return output_record(_record_id(task_id), custom_id, 200, task_id,
                             completion_body(task_id, result))
    error = result.get("error") or {}
    code = error.get("code") or "failed"
    body = {"error": {"message": error.get("message") or "the task failed",
                      "type": "server_error", "param": None, "code": code}}
    return output_record(_record_id(task_id), custom_id, STATUS_OF_ERROR.get(code, 500),
                         task_id, body)


def is_output(record: dict[str, Any]) -> bool:
    """Say whether a record belongs in the output file (a 200) or the error file."""
    response = record.get("response")
    return isinstance(response, dict) and response.get("status_code") == 200


def batch_object(row: dict[str, Any], status: str, counts: dict[str, int]) -> dict[str, Any]:
    """Return the batch as OpenAI's API shows it."""
    def at(column: str) -> int | None:
        value = row.get(column)
        return int(value) if value is not None else None

    return {
        "id": row["id"], "object": "batch", "endpoint": row["endpoint"], "errors": None,
        "input_file_id": row["input_file_id"], "completion_window": row["completion_window"],
        "status": status, "output_file_id": row["output_file_id"],
        "error_file_id": row["error_file_id"], "created_at": at("created_at"),
        "in_progress_at": at("in_progress_at"), "expires_at": at("expires_at"),
        "finalizing_at": at("finalizing_at"), "completed_at": at("completed_at"),
        "failed_at": None, "cancelling_at": at("cancelling_at"),
        # An expired batch ended at the end of its window (there is no column of its own).
        "expired_at": at("expires_at") if status == "expired" else None,
        "cancelled_at": at("cancelled_at"), "request_counts": counts,
        "metadata": row["metadata"],
    }


def live_counts(progress: Progress) -> dict[str, int]:
    """Return `request_counts` while the batch runs."""
    return {"total": progress.total, "completed": progress.succeeded,
            "failed": progress.failed}
