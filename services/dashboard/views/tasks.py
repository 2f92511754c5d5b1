"""The tasks page: search the results store, and one task's whole story."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, abort, render_template, request
from sqlalchemy import Select, select

from services.common.store import QUEUED_STATUSES, visible_status
from services.common.store import tasks as tasks_table
from services.dashboard.models import db
from services.dashboard.views.admin_gate import admin_required, no_store

bp = Blueprint("tasks", __name__)
bp.before_request(admin_required)  # prompts and outputs: the admin's, once a password is set
bp.after_request(no_store)
PAGE_SIZE = 50
STATUSES = ("queued", "running", "succeeded", "failed")
LISTED = ("id", "tenant", "kind", "status", "tier", "model", "cache", "attempts", "cost_usd",
          "latency_total_ms", "created_at", "finished_at", "error_code")


def _filters() -> dict[str, str]:
    return {key: request.args.get(key, "").strip()[:64] for key in ("id", "tenant", "status",
                                                                   "kind")}


def _search(filters: dict[str, str], before: float | None) -> Select[Any]:
    c = tasks_table.c
    query = select(*(c[name] for name in LISTED))
    if filters["id"]:
        query = query.where(c.id.startswith(filters["id"], autoescape=True))
    if filters["tenant"]:
        query = query.where(c.tenant == filters["tenant"])
    if filters["status"] == "queued":
        query = query.where(c.status.in_(QUEUED_STATUSES))
    elif filters["status"] in STATUSES:
        query = query.where(c.status == filters["status"])
    if filters["kind"]:
        query = query.where(c.kind == filters["kind"])
    if before is not None:
        query = query.where(c.created_at < before)
    return query.order_by(c.created_at.desc(), c.id.desc()).limit(PAGE_SIZE + 1)


@bp.get("/tasks")
def search() -> str:
    """List the newest tasks matching the filters, 50 per page."""
    filters = _filters()
    try:
        before = float(request.args["before"]) if request.args.get("before") else None
    except ValueError:
        before = None
    rows = [{**r, "status": visible_status(r["status"])}
            for r in db.session.execute(_search(filters, before)).mappings()]
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    next_before = rows[-1]["created_at"] if more and rows else None
    return render_template("tasks.html", rows=rows, filters=filters, statuses=STATUSES,
                           next_before=next_before, paged=before is not None)


def _json(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def latency_parts(row: dict[str, Any]) -> list[dict[str, Any]]:
    """Split the total latency into queue wait, model time and the rest, with bar widths."""
    queue = row.get("latency_queue_ms") or 0.0
    llm = row.get("latency_llm_ms") or 0.0
    total = max(row.get("latency_total_ms") or 0.0, queue + llm)
    parts = [("queue", "Queue wait", queue), ("llm", "Model call", llm),
             ("other", "Other", max(0.0, total - queue - llm))]
    return [{"key": k, "label": label, "ms": ms, "pct": (ms / total * 100) if total else 0.0}
            for k, label, ms in parts]


@bp.get("/tasks/<task_id>")
def detail(task_id: str) -> str:
    """Show one task: route decision, attempts, tokens, cost, latency and output."""
    query = select(tasks_table).where(tasks_table.c.id == task_id)
    if request.args.get("tenant"):  # ids are per tenant; without ?tenant= the newest shows
        query = query.where(tasks_table.c.tenant == request.args["tenant"])
    found = db.session.execute(query.order_by(tasks_table.c.created_at.desc()))
    row = found.mappings().first()
    if row is None:
        abort(404, f"no task {task_id!r} in the results store")
    task = {**row, "status": visible_status(row["status"])}
    return render_template("task.html", task=task, spec=_json(task["task_json"]),
                           result=_json(task["result_json"]), parts=latency_parts(task))
