"""The HTTP routes of ingest: submit and look up tasks, health and metrics."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis
from flask import Blueprint, Response, current_app, g, jsonify, request
from flask.typing import ResponseReturnValue
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from services.common.amqp import PublishFailed
from services.common.api_keys import ADMIN, KeyTable
from services.common.models import Task
from services.common.settings import Settings
from services.common.store import find_tasks, get_task, visible_status
from services.ingest.accept import StoreUnavailable, accept_task
from services.ingest.metrics import IngestMetrics
from services.ingest.publisher import Publisher
from services.ingest.scope import Forbidden, lookup_tenant, scope_tasks
from services.ingest.sql_store import SqlTaskStore
from services.ingest.validation import InvalidTask, decode_json, parse_tasks

log = logging.getLogger(__name__)

EXTENSION = "agentq"
BACKLOG_RETRY_AFTER_S = 10
UNAVAILABLE_RETRY_AFTER_S = 5

tasks = Blueprint("tasks", __name__)
ops = Blueprint("ops", __name__)


@dataclass(frozen=True)
class Ingest:
    """The clients one ingest app works with, made by `create_app`."""

    settings: Settings
    engine: Engine
    publisher: Publisher
    redis: redis.Redis
    metrics: IngestMetrics
    exposition: CollectorRegistry  # what /metrics serves (all gunicorn workers when shared)
    keys: KeyTable = KeyTable()  # empty = open


def _ingest() -> Ingest:
    ingest: Ingest = current_app.extensions[EXTENSION]
    return ingest


def error_response(status: int, code: str, message: str, field: str | None = None,
                   retry_after: int | None = None, **extra: Any) -> Response:
    """Build the contract's JSON error `{"error": {"code", "message", "field"}}`."""
    response = jsonify({"error": {"code": code, "message": message, "field": field}, **extra})
    response.status_code = status
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


@tasks.before_request
def authenticate() -> Response | None:
    """Find the tenant of the bearer key (`*` for an admin key, or when no key is set)."""
    keys = _ingest().keys
    if keys.open:
        g.agentq_caller = ADMIN
        return None
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    tenant = keys.tenant_for(token.strip()) if scheme.lower() == "bearer" else None
    if tenant is not None:
        g.agentq_caller = tenant
        return None
    response = error_response(401, "unauthorized",
                              "a valid 'Authorization: Bearer <key>' header is required",
                              "authorization")
    response.headers["WWW-Authenticate"] = 'Bearer realm="agentq"'
    return response


def caller() -> str:
    """Return the tenant `authenticate` found for this request (`*` = admin or open)."""
    found: str = g.agentq_caller
    return found


def _accept(ingest: Ingest, task: Task) -> dict[str, str]:
    """Store a task and queue it once per id (services.ingest.accept), and count it."""
    accepted = accept_task(task.stamped(), SqlTaskStore(ingest.engine), ingest.publisher,
                           time.time())
    counter = ingest.metrics.duplicates if accepted.duplicate else ingest.metrics.accepted
    counter.labels(door="http").inc()
    return accepted.answer()


@tasks.post("/v1/tasks")
def submit() -> ResponseReturnValue:
    """Accept one task (JSON object) or several (JSON list) and queue them."""
    ingest = _ingest()
    try:
        payload = decode_json(request.get_data(cache=False))
        batch = parse_tasks(payload)
    except InvalidTask as exc:
        return error_response(400, "invalid_task", exc.message, exc.field)
    try:
        batch = scope_tasks(batch, caller(), listed=isinstance(payload, list))
    except Forbidden as exc:
        return error_response(403, "forbidden", exc.message, exc.field)
    backlog = ingest.publisher.backlog()
    if backlog is not None and backlog > ingest.settings.max_backlog:
        return error_response(429, "backlog_full",
                              f"{backlog} tasks are waiting, over the limit of "
                              f"{ingest.settings.max_backlog}; retry later",
                              retry_after=BACKLOG_RETRY_AFTER_S)
    answers: list[dict[str, str]] = []
    for task in batch:
        try:
            answers.append(_accept(ingest, task))
        except (PublishFailed, StoreUnavailable) as exc:
            log.warning("cannot queue task %s: %r", task.id, exc)
            extra: dict[str, Any] = {"accepted": answers} if answers else {}
            return error_response(503, "unavailable",
                                  f"the queue or the store is unavailable; {len(answers)} of "
                                  f"{len(batch)} tasks were queued (resubmitting tasks that "
                                  "carry an id is safe)",
                                  retry_after=UNAVAILABLE_RETRY_AFTER_S, **extra)
    return jsonify(answers if isinstance(payload, list) else answers[0]), 202


def _rows(engine: Engine, task_id: str, tenant: str | None) -> list[dict[str, Any]]:
    if tenant is None:
        return []
    if tenant == ADMIN:
        return find_tasks(engine, task_id)
    row = get_task(engine, tenant, task_id)
    return [row] if row is not None else []


@tasks.get("/v1/tasks/<task_id>")
def show(task_id: str) -> ResponseReturnValue:
    """Return a task's status and, once finished, its result.

    A tenant's key reads that tenant's tasks only: another tenant's id is an unknown id.
    Ids are per tenant, so an admin key (or open mode) names the tenant with `?tenant=`
    when several use the id, else the answer is 409 naming field `tenant`.
    """
    tenant = lookup_tenant(caller(), request.args.get("tenant"))
    try:
        rows = _rows(_ingest().engine, task_id, tenant)
    except SQLAlchemyError as exc:
        log.warning("cannot read task %s: %r", task_id, exc)
        return error_response(503, "unavailable", "the store is unavailable",
                              retry_after=UNAVAILABLE_RETRY_AFTER_S)
    if not rows:
        return error_response(404, "not_found", f"no task with id {task_id!r}", "id")
    if len(rows) > 1:
        tenants = [r["tenant"] for r in rows]
        return error_response(409, "ambiguous_id",
                              f"tenants {', '.join(tenants)} each have a task {task_id!r}: "
                              "say which with ?tenant=", "tenant", tenants=tenants)
    row = rows[0]
    result = json.loads(row["result_json"]) if row["result_json"] else None
    return jsonify({"id": row["id"], "status": visible_status(row["status"]),
                    "tenant": row["tenant"],
                    "kind": row["kind"], "created_at": row["created_at"], "result": result})


def _redis_ok(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError as exc:
        log.info("Redis unreachable: %r", exc)
        return False


def _database_ok(engine: Engine) -> bool:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        log.info("database unreachable: %r", exc)
        return False
    return True


@ops.get("/healthz")
def healthz() -> ResponseReturnValue:
    """Report whether RabbitMQ, Redis and the database answer."""
    ingest = _ingest()
    checks = {"amqp": ingest.publisher.healthy(), "redis": _redis_ok(ingest.redis),
              "database": _database_ok(ingest.engine)}
    healthy = all(checks.values())
    return jsonify({"status": "ok" if healthy else "degraded", **checks}), 200 if healthy else 503


@ops.get("/metrics")
def metrics() -> ResponseReturnValue:
    """Serve the Prometheus text exposition."""
    return Response(generate_latest(_ingest().exposition), content_type=CONTENT_TYPE_LATEST)
