"""agentq's own Batch API, between the routes and the store: files, batches, their views.

The routes hand in the caller (a tenant, or `*` for an admin key or open ingest); a tenant
sees only what it owns, and anything else is an unknown id.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from services.common.api_keys import ADMIN
from services.common.batch_format import MAX_BATCH_LINES, jsonl
from services.ingest import batch_store
from services.ingest.batch_accept import BatchAcceptor
from services.ingest.batch_requests import WINDOW_S, BatchSpec, batch_tasks, check_input
from services.ingest.batch_results import (
    batch_object,
    current_status,
    final_status,
    is_expired,
    is_output,
    line_record,
    live_counts,
)

DEFAULT_TENANT = "default"  # whose tasks an admin's batch makes


def owner_filter(caller: str) -> str | None:
    """Return the owner a caller's lookups are limited to (None = every owner)."""
    return None if caller == ADMIN else caller


def file_object(row: dict[str, Any]) -> dict[str, Any]:
    """Return a file as OpenAI's Files API shows it."""
    return {"id": row["id"], "object": "file", "bytes": row["bytes"],
            "created_at": int(row["created_at"]), "filename": row["filename"],
            "purpose": row["purpose"], "status": "processed", "status_details": None,
            "expires_at": None}


@dataclass(frozen=True)
class BatchService:
    """Files and batches of one ingest process, over the shared SQL store."""

    engine: Engine
    acceptor: BatchAcceptor
    max_file_bytes: int  # AGENTQ_BATCH_FILE_MAX_BYTES
    max_lines: int = MAX_BATCH_LINES
    clock: Callable[[], float] = field(default=time.time)

    def upload(self, caller: str, filename: str, content: bytes) -> dict[str, Any]:
        """Store a batch input file once every line checks (BatchFileError otherwise)."""
        check_input(content, self.max_lines)
        row = {"id": "file-" + os.urandom(12).hex(), "owner": caller, "purpose": "batch",
               "filename": filename[:255], "bytes": len(content), "created_at": time.time(),
               "content": content}
        batch_store.add_file(self.engine, row)
        return file_object(row)

    def file(self, caller: str, file_id: str, content: bool = False) -> dict[str, Any] | None:
        """Return a file row the caller may see."""
        return batch_store.get_file(self.engine, file_id, owner_filter(caller), content)

    def create(self, caller: str, input_file_id: str, completion_window: str,
               metadata: dict[str, str] | None, kind: str) -> dict[str, Any] | None:
        """Record a batch and its lines, then have them accepted; None if no such file."""
        stored = self.file(caller, input_file_id, content=True)
        if stored is None or stored["purpose"] != "batch":
            return None
        now = time.time()
        batch_id = "batch_" + os.urandom(12).hex()
        tenant = DEFAULT_TENANT if caller == ADMIN else caller
        spec = BatchSpec(batch_id, tenant, kind, now, completion_window)
        pairs = batch_tasks(stored["content"], spec)
        row = {"id": batch_id, "owner": caller, "tenant": tenant,
               "input_file_id": input_file_id, "endpoint": "/v1/chat/completions",
               "completion_window": completion_window, "status": "validating",
               "metadata_json": json.dumps(metadata) if metadata is not None else None,
               "total": len(pairs), "created_at": now,
               "expires_at": now + WINDOW_S[completion_window]}
        batch_store.insert_batch(self.engine, row,
                                 [(line.custom_id, task) for line, task in pairs])
        self.acceptor.wake()  # recorded durably first: from here no line can be lost
        return self.view(caller, batch_id)

    def view(self, caller: str, batch_id: str) -> dict[str, Any] | None:
        """Return the batch object, writing its result files the first time it is done."""
        row = batch_store.get_batch(self.engine, batch_id, owner_filter(caller))
        if row is None:
            return None
        if row["completed"] is not None:  # ended: its counts are final
            return batch_object(row, row["status"], {
                "total": row["total"], "completed": row["completed"], "failed": row["failed"]})
        now = self.clock()
        progress = batch_store.progress(self.engine, batch_id)
        expired = is_expired(row["expires_at"], now)
        status = current_status(row["status"], progress, accepting=row["lease_until"] >= now,
                                expired=expired)
        if status == "validating" and row["lease_until"] < now:
            self.acceptor.wake()  # the ingest accepting it died: take it up here
        if status == "finalizing" and self._finalize(
                row, now, final_status(row["status"], progress, expired)):
            return self.view(caller, batch_id)
        return batch_object(row, status, live_counts(progress))

    def _finalize(self, row: dict[str, Any], now: float, end: str) -> bool:
        # Lines without a Result by now (an expired batch's) go in the error file. Its
        # acceptor, if any, stops at its next lease renewal (the batch is no longer validating).
        records = [line_record(line["custom_id"], line["task_id"],
                               line["status"] if line["accepted"] else None,
                               json.loads(line["result_json"]) if line["result_json"] else None,
                               end)
                   for line in batch_store.finished_lines(self.engine, row["id"])]
        output = [record for record in records if is_output(record)]
        errors = [record for record in records if not is_output(record)]
        new_files = [self._result_file(row, name, part, now)
                     for name, part in (("output", output), ("error", errors)) if part]
        ended_at = {} if end == "expired" else {f"{end}_at": now}  # expired_at: its window
        values = {"status": end, "finalizing_at": now, **ended_at,
                  "completed": len(output), "failed": len(errors),
                  "output_file_id": new_files[0]["id"] if output else None,
                  "error_file_id": new_files[-1]["id"] if errors else None}
        return batch_store.finalize(self.engine, row["id"], values, new_files)

    @staticmethod
    def _result_file(row: dict[str, Any], name: str, records: list[dict[str, Any]],
                     now: float) -> dict[str, Any]:
        content = jsonl(records)
        return {"id": "file-" + os.urandom(12).hex(), "owner": row["owner"],
                "purpose": "batch_output", "filename": f"{row['id']}_{name}.jsonl",
                "bytes": len(content), "created_at": now, "content": content}

    def page(self, caller: str, limit: int, after: str | None) -> dict[str, Any]:
        """Return a page of the caller's batches, newest first, as OpenAI lists them."""
        rows, more = batch_store.page_batches(self.engine, owner_filter(caller), limit, after)
        data = [view for row in rows if (view := self.view(caller, row["id"])) is not None]
        return {"object": "list", "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None, "has_more": more}

    def cancel(self, caller: str, batch_id: str) -> tuple[dict[str, Any] | None, bool]:
        """Cancel a running batch: (its object or None if unknown, whether it could be)."""
        if batch_store.get_batch(self.engine, batch_id, owner_filter(caller)) is None:
            return None, False
        cancelled = batch_store.cancel(self.engine, batch_id, time.time())
        return self.view(caller, batch_id), cancelled

