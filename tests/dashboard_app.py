"""Run the dashboard app in a test, and log in to it as a browser does (CSRF token first)."""

from __future__ import annotations

import re
from collections.abc import Iterator

from flask import Flask
from flask.testing import FlaskClient

from services.common.settings import Settings
from services.dashboard import create_app
from services.dashboard.models import db


def serve(settings: Settings, password: str) -> Iterator[Flask]:
    """Yield the dashboard app with `password` as the admin password ("" = none)."""
    app = create_app(settings.model_copy(update={"dashboard_password": password}),
                     {"TESTING": True})
    yield app
    with app.app_context():
        db.engine.dispose()


def csrf_token(html: str) -> str:
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def log_in(client: FlaskClient, password: str) -> None:
    token = csrf_token(client.get("/login").get_data(as_text=True))
    response = client.post("/login", data={"csrf_token": token, "password": password})
    assert response.status_code == 303
