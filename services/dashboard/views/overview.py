"""The overview page and the metrics JSON its charts poll."""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, render_template, request

from services.common.topology import Names
from services.dashboard import alert_store
from services.dashboard.batch_metrics import batch_discounts
from services.dashboard.metrics import window_metrics
from services.dashboard.models import db
from services.dashboard.queries import DEFAULT_WINDOW, WINDOWS
from services.dashboard.self_hosting import plan_from_settings
from services.dashboard.views.access import settings
from services.dashboard.views.chrome import api_error

bp = Blueprint("overview", __name__)
REFRESH_S = 5


def _metrics(window: str, tenant: str | None) -> dict[str, Any]:
    extensions = current_app.extensions
    if "agentq.batch_discounts" not in extensions:  # the tier table is read once per process
        extensions["agentq.batch_discounts"] = batch_discounts(settings())
    return window_metrics(db.session, Names(settings().namespace), WINDOWS[window], time.time(),
                          tenant or None, extensions["agentq.limiter_rpm"],
                          extensions["agentq.batch_discounts"],
                          plan_from_settings(alert_store.load_values(db.session)))


@bp.get("/")
def index() -> str:
    """Render the overview with the chosen window's numbers already in the page."""
    window = request.args.get("window", DEFAULT_WINDOW)
    if window not in WINDOWS:
        window = DEFAULT_WINDOW
    tenant = request.args.get("tenant", "").strip()[:64]
    doc = _metrics(window, tenant)
    return render_template("overview.html", doc=doc, windows=list(WINDOWS), window=window,
                           tenant=tenant, refresh_s=REFRESH_S)


@bp.get("/api/metrics")
def api_metrics() -> Response:
    """Return one window's metrics as JSON (`?window=15m|1h|24h|7d&tenant=`)."""
    window = request.args.get("window", DEFAULT_WINDOW)
    if window not in WINDOWS:
        return api_error(400, "invalid_window", f"window must be one of {', '.join(WINDOWS)}",
                         "window")
    response = jsonify(_metrics(window, request.args.get("tenant", "").strip()[:64]))
    response.headers["Cache-Control"] = "no-store"
    return response
