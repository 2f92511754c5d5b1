"""The SQL store behind `accept_task`: services.common.store, its errors translated."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from services.common.models import Task
from services.common.store import forget_task, insert_task, mark_queued, unpublished_tasks
from services.ingest.accept import StoreUnavailable

T = TypeVar("T")


def _translated(what: str, call: Callable[[], T]) -> T:
    try:
        return call()
    except SQLAlchemyError as exc:
        raise StoreUnavailable(f"cannot {what}: {exc!r}") from None


class SqlTaskStore:
    """The tasks table as a `TaskStore`; every database error is a `StoreUnavailable`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def insert(self, task: Task) -> tuple[dict[str, Any], bool]:
        return _translated(f"store task {task.id}", lambda: insert_task(self.engine, task))

    def forget(self, task: Task) -> None:
        _translated(f"forget task {task.id}",
                    lambda: forget_task(self.engine, task.tenant, task.id))

    def mark_queued(self, task: Task) -> None:
        _translated(f"mark task {task.id} queued",
                    lambda: mark_queued(self.engine, task.tenant, task.id))

    def unpublished(self, older_than_s: float, now: float | None = None) -> list[Task]:
        """Return the tasks stored over `older_than_s` ago and never confirmed queued."""
        accepted_before = (time.time() if now is None else now) - older_than_s
        return _translated("read unpublished tasks",
                           lambda: unpublished_tasks(self.engine, accepted_before))
