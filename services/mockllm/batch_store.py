"""Keep the simulated provider's batches in memory and write their result files when they end.

Where a batch stands is decided by batches.py from its plan and the clock; this module
holds the batches, orders them for listing and, the first time a batch is seen ended,
runs its lines and stores the output and error files.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services.mockllm.batch_lines import is_success, not_run, run_line
from services.mockllm.batches import (
    TERMINAL,
    Plan,
    reached_at,
    request_counts,
    run_until,
    status_at,
)
from services.mockllm.files import BatchLine, FileStore, jsonl

COMPLETION_WINDOW = "24h"
MAX_LIST = 100


@dataclass(slots=True)
class Batch:
    """Hold one batch: its plan, its lines and what has happened to it."""

    id: str
    input_file_id: str
    endpoint: str
    metadata: dict[str, str] | None
    plan: Plan
    lines: list[BatchLine]
    cancelled_at: float | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    final_counts: dict[str, int] | None = None  # set once the result files are written


@dataclass(frozen=True, slots=True)
class BatchFate:
    """Hold the settings that decide a new batch's fate (read from MockSettings at creation)."""

    completion_s: float
    error_rate: float
    expire: bool


@dataclass(slots=True)
class BatchStore:
    """Hold every batch by id, in creation order."""

    files: FileStore
    clock: Callable[[], float]
    batches: dict[str, Batch] = field(default_factory=dict)

    def create(
        self,
        input_file_id: str,
        endpoint: str,
        lines: list[BatchLine],
        fate: BatchFate,
        rng: random.Random,
        metadata: dict[str, str] | None = None,
    ) -> Batch:
        """Start a batch over already validated lines."""
        failed = frozenset(i for i in range(len(lines)) if rng.random() < fate.error_rate)
        wrong = next((line for line in lines if line.url != endpoint), None)
        invalid = None
        if wrong is not None:
            invalid = (
                f"The line with custom_id {wrong.custom_id!r} has url {wrong.url!r}, "
                f"but the batch's endpoint is {endpoint!r}."
            )
        plan = Plan(self.clock(), fate.completion_s, len(lines), fate.expire, failed, invalid)
        batch = Batch(
            "batch_" + os.urandom(12).hex(), input_file_id, endpoint, metadata, plan, lines
        )
        self.batches[batch.id] = batch
        return batch

    def get(self, batch_id: str) -> Batch | None:
        """Return a batch, or None when there is no such batch."""
        return self.batches.get(batch_id)

    def cancel(self, batch: Batch) -> bool:
        """Ask a running batch to stop; say False when it has already ended."""
        if self.status(batch) in TERMINAL:
            return False
        if batch.cancelled_at is None:
            batch.cancelled_at = self.clock()
        return True

    def page(self, limit: int, after: str | None) -> tuple[list[Batch], bool]:
        """Return the batches after `after`, newest first, and whether more remain."""
        newest = list(reversed(self.batches.values()))
        start = 0
        if after is not None:
            ids = [batch.id for batch in newest]
            start = ids.index(after) + 1 if after in ids else len(ids)
        chosen = newest[start : start + limit]
        return chosen, start + limit < len(newest)

    def status(self, batch: Batch) -> str:
        """Return where the batch stands now."""
        return status_at(batch.plan, self.clock(), batch.cancelled_at)

    def to_json(self, batch: Batch) -> dict[str, Any]:
        """Return the batch object GET /v1/batches/{id} shows, writing its files if it ended."""
        now = self.clock()
        self._settle(batch, now)  # the same instant for status and files, so they agree
        plan = batch.plan
        errors = None
        if plan.invalid is not None and status_at(plan, now, batch.cancelled_at) == "failed":
            error = {
                "code": "invalid_request",
                "message": plan.invalid,
                "param": "endpoint",
                "line": None,
            }
            errors = {"object": "list", "data": [error]}
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": batch.endpoint,
            "errors": errors,
            "input_file_id": batch.input_file_id,
            "completion_window": COMPLETION_WINDOW,
            "status": status_at(plan, now, batch.cancelled_at),
            "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id,
            "created_at": int(plan.created),
            "expires_at": int(plan.created) + 24 * 3600,
            **reached_at(plan, now, batch.cancelled_at),
            "request_counts": batch.final_counts or request_counts(plan, now, batch.cancelled_at),
            "metadata": batch.metadata,
        }

    def _settle(self, batch: Batch, now: float) -> None:
        # Result files are written once, the first time the batch is seen ended.
        status = status_at(batch.plan, now, batch.cancelled_at)
        if status not in TERMINAL or status == "failed" or batch.final_counts is not None:
            return
        ran = run_until(batch.plan, batch.plan.ends_at, batch.cancelled_at)
        failed = batch.plan.failed_lines
        records = [run_line(line, i in failed) for i, line in enumerate(batch.lines[:ran])]
        if status in ("expired", "cancelled"):
            records += [not_run(line, status) for line in batch.lines[ran:]]
        output = [record for record in records if is_success(record)]
        errors = [record for record in records if not is_success(record)]
        if output:
            name = f"{batch.id}_output.jsonl"
            batch.output_file_id = self.files.add(name, "batch_output", jsonl(output)).id
        if errors:
            name = f"{batch.id}_error.jsonl"
            batch.error_file_id = self.files.add(name, "batch_output", jsonl(errors)).id
        # A body the live endpoint would refuse fails its line too, so count from the files.
        batch.final_counts = {
            "total": len(batch.lines),
            "completed": len(output),
            "failed": len(errors),
        }
