"""The settings page and API (alert thresholds, GPU figures), and the admin login."""

from __future__ import annotations

import math
import time
from urllib.parse import urlparse

from flask import (
    Blueprint,
    Response,
    flash,
    jsonify,
    make_response,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.wrappers import Response as BaseResponse

from services.dashboard import alert_store
from services.dashboard.forms import LoginForm, LogoutForm, thresholds_form
from services.dashboard.models import db
from services.dashboard.thresholds import RULES, ThresholdError, validate
from services.dashboard.views.access import attempt_login, edit_access, login_wait_s
from services.dashboard.views.admin_gate import unauthorized, wants_json
from services.dashboard.views.chrome import api_error

bp = Blueprint("settings", __name__)
GENERAL_KEYS = ("cost_spike_factor", "hysteresis", "webhook_url")
SELF_HOSTING_KEYS = ("self_host_gpu_hour_usd", "self_host_gpus", "self_host_tokens_per_s")


def _page(form: object, status: int = 200) -> tuple[str, int]:
    return render_template("settings.html", form=form, rules=RULES, general=GENERAL_KEYS,
                           self_hosting=SELF_HOSTING_KEYS, access=edit_access()), status


@bp.get("/settings")
def show() -> tuple[str, int]:
    """Show every threshold; editable for the admin, read-only otherwise."""
    return _page(thresholds_form(alert_store.load_values(db.session)))


@bp.post("/settings")
def save() -> BaseResponse | tuple[str, int]:
    """Validate and store the submitted thresholds (the evaluator picks them up next run)."""
    access = edit_access()
    if access == "locked":
        return _page(thresholds_form(alert_store.load_values(db.session)), 403)
    if access == "login":
        return redirect(url_for("settings.login", next=url_for("settings.show")))
    form = thresholds_form()
    if not form.validate():
        return _page(form, 400)
    alert_store.save_values(db.session, form.parsed(), time.time())
    db.session.commit()
    flash("Thresholds saved: the alert evaluator applies them within one interval; the "
          "overview prices self-hosting with the GPU figures at its next refresh.", "ok")
    return redirect(url_for("settings.show"), 303)


@bp.get("/api/thresholds")
def api_get() -> Response:
    """Return every setting as a flat JSON object."""
    return jsonify(alert_store.load_values(db.session))


@bp.put("/api/thresholds")
def api_put() -> Response:
    """Update the settings given in a JSON object (others keep their values)."""
    access = edit_access()
    if access == "locked":
        return api_error(403, "settings_locked", "settings are read-only: set "
                         "AGENTQ_DASHBOARD_PASSWORD to enable editing")
    if access == "login":
        return unauthorized()
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return api_error(400, "invalid_json", "send a JSON object of threshold keys to values")
    try:
        parsed = validate(body)
    except ThresholdError as exc:
        return api_error(400, "invalid_threshold", exc.message, exc.field)
    alert_store.save_values(db.session, parsed, time.time())
    db.session.commit()
    return jsonify(alert_store.load_values(db.session))


def _safe_next(target: str | None) -> str:
    # Only same-site paths: a crafted ?next= must not send the admin elsewhere.
    # Browsers read a backslash as a slash, so "/\\evil.example" is another site too.
    if target and target.startswith("/") and not urlparse(target).netloc \
            and not target.startswith("//") and "\\" not in target:
        return target
    return url_for("settings.show")


@bp.route("/login", methods=["GET", "POST"])
def login() -> BaseResponse | tuple[str, int]:
    """Log the admin in with the dashboard password."""
    form = LoginForm()
    if edit_access() == "locked":
        return render_template("login.html", form=form, locked=True), 200
    if request.method == "POST" and (wait := login_wait_s()) > 0:
        return _locked_out(form, wait)  # the password is not even looked at
    if form.validate_on_submit():
        if attempt_login(form.password.data or ""):
            session.clear()
            session["admin"] = True
            session.permanent = True
            flash("Logged in: settings can be edited.", "ok")
            return redirect(_safe_next(request.args.get("next")), 303)
        form.password.errors.append("Wrong password.")
        return render_template("login.html", form=form, locked=False), 401
    return render_template("login.html", form=form, locked=False), \
        400 if request.method == "POST" else 200


def _locked_out(form: LoginForm, wait: float) -> BaseResponse:
    seconds = max(1, math.ceil(wait))
    message = (f"Too many failed logins from your address: try again in "
               f"{math.ceil(seconds / 60)} min.")
    response: BaseResponse
    if wants_json():
        response = api_error(429, "too_many_attempts", message)
    else:
        response = make_response(render_template("login.html", form=form, locked=False,
                                                 locked_out=message), 429)
    response.headers["Retry-After"] = str(seconds)
    return response


@bp.post("/logout")
def logout() -> BaseResponse:
    """Log the admin out."""
    if LogoutForm().validate_on_submit():
        session.clear()
        flash("Logged out.", "ok")
    return redirect(url_for("overview.index"), 303)

