"""What a caller's key lets it do: submit for its tenant, read its tenant's tasks.

The caller is the tenant its API key belongs to, or `*` (an admin key, or no keys
configured): `*` submits for any tenant and reads any task.
"""

from __future__ import annotations

from services.common.api_keys import ADMIN
from services.common.models import Task


class Forbidden(ValueError):
    """A task for a tenant the caller's key does not belong to."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def scope_task(task: Task, caller: str, field: str = "tenant") -> Task:
    """Give a task without a tenant the caller's; refuse one for another tenant."""
    if caller == ADMIN:
        return task
    if "tenant" not in task.model_fields_set:
        return task.model_copy(update={"tenant": caller})
    if task.tenant != caller:
        raise Forbidden(field, f"this API key is for tenant {caller!r}, not {task.tenant!r}")
    return task


def scope_tasks(tasks: list[Task], caller: str, listed: bool) -> list[Task]:
    """Scope every task of a submission; a list names the item at fault, as validation does."""
    if not listed:
        return [scope_task(task, caller) for task in tasks]
    return [scope_task(task, caller, f"[{index}].tenant") for index, task in enumerate(tasks)]


def lookup_tenant(caller: str, asked: str | None) -> str | None:
    """Return the tenant to look a task id up under (`*` = any), or None when the caller may
    see no task under the tenant it asked for (answered like an unknown id)."""
    if caller == ADMIN:
        return asked or ADMIN
    return caller if asked in (None, "", caller) else None
