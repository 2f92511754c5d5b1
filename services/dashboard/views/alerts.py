"""The alerts page (rules, states, history) and the banner's JSON."""

from __future__ import annotations

import time

from flask import Blueprint, Response, jsonify, render_template

from services.dashboard import alert_store, queries
from services.dashboard.alerts import describe
from services.dashboard.models import db
from services.dashboard.snapshot import alert_list
from services.dashboard.thresholds import RULES, rule_configs

bp = Blueprint("alerts", __name__)
SCALE_HISTORY_S = 7 * 86_400


@bp.get("/alerts")
def index() -> str:
    """Show every rule's state, its recent history and the autoscaler's changes."""
    values = alert_store.load_values(db.session)
    configs = rule_configs(values)
    states = alert_store.states(db.session)
    rules = []
    for info in RULES:
        state = states.get(info.key)
        config = configs[info.key]
        rules.append({
            "key": info.key, "title": info.title, "help": info.help,
            "state": state.state if state else "ok", "since": state.since if state else None,
            "value": describe(state.value if state else None, info.unit),
            "threshold": describe(state.threshold if state and state.threshold is not None
                                  else config.threshold, info.unit),
            "for_s": config.for_s, "enabled": config.enabled})
    return render_template(
        "alerts.html", rules=rules, history=alert_store.history(db.session),
        scale_events=queries.scale_events(db.session, time.time() - SCALE_HISTORY_S, 50),
        hysteresis=values["hysteresis"], webhook=bool(values["webhook_url"]))


@bp.get("/api/alerts")
def api_alerts() -> Response:
    """Return the firing alerts (what the banner shows)."""
    response = jsonify({"alerts": alert_list(queries.active_alerts(db.session))})
    response.headers["Cache-Control"] = "no-store"
    return response
