"""Pages that show prompts and outputs are for the admin once a password is set."""

from __future__ import annotations

from flask import Response, redirect, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from services.dashboard.views.access import is_admin, password
from services.dashboard.views.chrome import api_error


def wants_json() -> bool:
    """Tell whether the client is an API caller rather than a browser."""
    if request.path.startswith("/api/"):
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json"


def unauthorized() -> Response:
    """Return the API's 401: log in, or send the password as a bearer token."""
    response = api_error(401, "unauthorized", "log in, or send Authorization: Bearer "
                         "<dashboard password>")
    response.headers["WWW-Authenticate"] = 'Bearer realm="agentq-dashboard"'
    return response


def admin_required() -> BaseResponse | None:
    """A before_request hook: without a password anyone reads; with one, only the admin."""
    if not password() or is_admin():
        return None
    if wants_json():
        return unauthorized()
    target = request.full_path if request.query_string else request.path
    return redirect(url_for("settings.login", next=target))


def no_store(response: Response) -> Response:
    """An after_request hook: keep prompts and outputs out of shared and browser caches."""
    response.headers.setdefault("Cache-Control", "no-store")
    return response
