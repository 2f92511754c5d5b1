"""What every page shares: the top bar's data, the alert banner, Plotly's JS, API errors."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import plotly
from flask import Flask, Response, jsonify, request, send_from_directory
from werkzeug.exceptions import HTTPException

from services.dashboard import queries
from services.dashboard.cards import money
from services.dashboard.forms import LogoutForm
from services.dashboard.models import db
from services.dashboard.snapshot import alert_list
from services.dashboard.views.access import is_admin, password, settings

PLOTLY_DIR = Path(plotly.__file__).parent / "package_data"


def api_error(status: int, code: str, message: str, field: str | None = None) -> Response:
    """Return the contract's error shape: {"error": {"code", "message", "field"}}."""
    response = jsonify({"error": {"code": code, "message": message, "field": field}})
    response.status_code = status
    return response


def _chrome() -> dict[str, Any]:
    admin = is_admin()
    return {"namespace": settings().namespace, "banner": alert_list(
        queries.active_alerts(db.session)), "is_admin": admin,
        "password_set": bool(password()),
        # Only the admin sees the logout button: others get no CSRF session cookie from it.
        "logout_form": LogoutForm() if admin else None}


def _plotly() -> Response:
    # Served from the installed plotly package: no CDN (the stack may have no internet).
    return send_from_directory(PLOTLY_DIR, "plotly.min.js", max_age=7 * 24 * 3600,
                               mimetype="text/javascript")


def _api_errors(exc: HTTPException) -> Response | HTTPException:
    if request.path.startswith("/api/"):
        return api_error(exc.code or 500, (exc.name or "error").lower().replace(" ", "_"),
                         exc.description or "")
    return exc


def register_chrome(app: Flask) -> None:
    """Hook the shared parts onto the app."""
    app.context_processor(_chrome)
    app.add_url_rule("/vendor/plotly.min.js", "plotly", _plotly)
    app.register_error_handler(HTTPException, _api_errors)
    app.add_template_filter(money, "money")

    @app.template_filter("ago")
    def ago(ts: float | None) -> str:
        if not ts:
            return "—"
        seconds = max(0, int(time.time() - ts))
        for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
            if seconds >= size:
                return f"{seconds // size} {unit} ago"
        return f"{seconds} s ago"

    @app.template_filter("clock")
    def clock(ts: float | None) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "—"
