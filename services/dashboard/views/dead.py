"""The dead-letter page and API: list `<ns>.dead` without changing it; the admin replays.

Reading and replaying go through services.common.dead_letters, on a short-lived connection
of their own per request. Task ids and reasons hint at prompts, so the page is the admin's
once a password is set (like /tasks); replaying is the admin's only, so without a password
nobody replays (like settings).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pika.exceptions
from flask import (
    Blueprint,
    Response,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from werkzeug.wrappers import Response as BaseResponse

from services.common.dead_letters import DeadLetterQueue, Filter
from services.common.settings import Settings
from services.common.topology import Names
from services.dashboard.forms import ReplayForm
from services.dashboard.models import db
from services.dashboard.views.access import edit_access
from services.dashboard.views.admin_gate import admin_required, no_store
from services.dashboard.views.chrome import api_error

bp = Blueprint("dead", __name__)
bp.before_request(admin_required)  # task ids and reasons: the admin's once a password is set
bp.after_request(no_store)
SHOWN_AT_MOST = 500  # rows on the page; the count covers them all
BROKER_TIMEOUT_S = 3.0
BLOCKED_TIMEOUT_S = 10.0
BROKER_ERRORS = (OSError, pika.exceptions.AMQPError)
LOCKED = "replay needs the admin: set AGENTQ_DASHBOARD_PASSWORD and log in"


def quick_url(amqp_url: str) -> str:
    """Return the URL with short connect and blocked-publish timeouts unless it sets its own:
    a page must not hang on a broker that does not answer."""
    parts = urlsplit(amqp_url)
    query = dict(parse_qsl(parts.query))
    for key, value in (("connection_attempts", 1), ("socket_timeout", BROKER_TIMEOUT_S),
                       ("stack_timeout", BROKER_TIMEOUT_S),
                       ("blocked_connection_timeout", BLOCKED_TIMEOUT_S)):
        query.setdefault(key, str(value))
    return urlunsplit(parts._replace(query=urlencode(query)))


def dead_letter_queue(settings: Settings) -> DeadLetterQueue:
    """Return the namespace's dead-letter queue as the dashboard reads it (no I/O yet)."""
    return DeadLetterQueue(quick_url(settings.amqp_url), Names(settings.namespace))


def _queue() -> DeadLetterQueue:
    found: DeadLetterQueue = current_app.extensions["agentq.dead_letters"]
    return found


def report_text(report: dict[str, Any]) -> str:
    """Say what a replay did, e.g. "2 replayed, 1 duplicate dropped, 3 kept (not matching)"."""
    parts = [f"{report['replayed']} replayed"]
    for key, one, many in (
            ("duplicates", "duplicate dropped", "duplicates dropped"),
            ("already_succeeded", "already succeeded (dropped)", "already succeeded (dropped)"),
            ("not_matching", "kept (not matching)", "kept (not matching)"),
            ("unreadable", "kept (not a task)", "kept (not a task)")):
        if report.get(key):
            parts.append(f"{report[key]} {one if report[key] == 1 else many}")
    return ", ".join(parts)


def _text(value: Any, limit: int) -> str | None:
    """Return a filter value, stripped and bounded; empty = no filter."""
    text = str(value or "").strip()[:limit]
    return text or None


def _page_filters() -> dict[str, str]:
    return {key: request.args.get(key, "").strip()[:limit]
            for key, limit in (("reason", 255), ("tenant", 64))}


@bp.get("/dead")
def index() -> tuple[str, int]:
    """List the dead letters matching the reason and tenant filters."""
    filters = _page_filters()
    where = Filter(reason=filters["reason"] or None, tenant=filters["tenant"] or None)
    try:
        letters, broker_error = _queue().list(where), None
    except BROKER_ERRORS as exc:
        letters, broker_error = [], f"{type(exc).__name__}: {exc}".rstrip(": ")
    access = edit_access()
    return render_template(
        "dead.html", letters=letters[:SHOWN_AT_MOST], count=len(letters), filters=filters,
        query={key: value for key, value in filters.items() if value},
        form=ReplayForm() if access == "allowed" else None, access=access,
        broker_error=broker_error, shown_at_most=SHOWN_AT_MOST), 503 if broker_error else 200


@bp.post("/dead/replay")
def replay() -> BaseResponse | tuple[str, int]:
    """Replay one task or every matching letter, then go back to the page with a report."""
    if edit_access() != "allowed":  # no password: nobody is admin (a guest was sent to login)
        return render_template("dead_refused.html", message=LOCKED), 403
    form = ReplayForm()
    if not form.validate_on_submit():
        errors = "; ".join(e for field in form.errors.values() for e in field)
        return render_template("dead_refused.html", message=f"Nothing was replayed: {errors}. "
                               "Reload the page and try again."), 400
    if form.scope.data == "one":
        where = Filter(tenant=_text(form.tenant.data, 64), task_id=_text(form.task_id.data, 255))
    else:
        where = Filter(reason=_text(form.reason.data, 255), tenant=_text(form.tenant.data, 64))
    try:
        report = _queue().replay(db.engine, where).as_dict()
    except BROKER_ERRORS as exc:
        flash(f"Nothing was replayed: RabbitMQ unreachable ({type(exc).__name__}).", "error")
    else:
        flash(report_text(report), "ok" if report["replayed"] else "error")
    # Back to the page as it was filtered (the form's action carries its query string).
    back: dict[str, Any] = {key: value for key, value in _page_filters().items() if value}
    return redirect(url_for("dead.index", **back), 303)


@bp.get("/api/dead")
def api_list() -> Response:
    """Return the matching dead letters' summaries (`?reason=&tenant=`)."""
    filters = _page_filters()
    try:
        letters = _queue().list(Filter(reason=filters["reason"] or None,
                                       tenant=filters["tenant"] or None))
    except BROKER_ERRORS as exc:
        return api_error(503, "broker_unavailable", f"RabbitMQ unreachable: {exc!r}")
    return jsonify({"count": len(letters), "dead_letters": [x.summary() for x in letters]})


@bp.post("/api/dead/replay")
def api_replay() -> Response:
    """Replay the letters matching a JSON {reason?, tenant?, task_id?}; return the report."""
    if edit_access() != "allowed":
        return api_error(403, "replay_locked", LOCKED)
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return api_error(400, "invalid_json", "send a JSON object: {reason?, tenant?, task_id?}")
    for key in body:
        if key not in ("reason", "tenant", "task_id"):
            return api_error(400, "unknown_field", f"unknown field {key!r}", key)
        if body[key] is not None and not isinstance(body[key], str):
            return api_error(400, "invalid_field", f"{key} must be a string", key)
    where = Filter(reason=_text(body.get("reason"), 255), tenant=_text(body.get("tenant"), 64),
                   task_id=_text(body.get("task_id"), 255))
    try:
        report = _queue().replay(db.engine, where)
    except BROKER_ERRORS as exc:
        return api_error(503, "broker_unavailable", f"RabbitMQ unreachable: {exc!r}")
    return jsonify(report.as_dict())
