"""The monitoring dashboard's application factory.

Served by `gunicorn 'services.dashboard:create_app()'` (see `serve.py`).
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask
from sqlalchemy import make_url

from services.common.settings import Settings
from services.common.store import engine_url


def _database_uri(url: str) -> str:
    # Flask-SQLAlchemy would put a relative SQLite path in the instance folder; the rest of
    # agentq means the working directory, so pin it down before handing it over.
    parsed = make_url(engine_url(url))
    database = parsed.database
    if parsed.drivername.startswith("sqlite") and database and database != ":memory:" \
            and not os.path.isabs(database):
        parsed = parsed.set(database=os.path.abspath(database))
    return parsed.render_as_string(hide_password=False)


def _engine_options(url: str) -> dict[str, Any]:
    options: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        options["connect_args"] = {"timeout": 30, "check_same_thread": False}
    return options


def create_app(settings: Settings | None = None,
               test_config: dict[str, Any] | None = None) -> Flask:
    """Create and configure the dashboard app."""
    settings = settings or Settings()
    app = Flask(__name__)
    url = _database_uri(settings.database_url)
    app.config.from_mapping(
        SQLALCHEMY_DATABASE_URI=url,
        SQLALCHEMY_ENGINE_OPTIONS=_engine_options(url),
        WTF_CSRF_TIME_LIMIT=None,  # a settings form left open over lunch still saves
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=12 * 3600,
    )
    if test_config:
        app.config.update(test_config)
    app.extensions["agentq.settings"] = settings
    app.extensions["agentq.limiter_rpm"] = _limiter_rpm(settings)

    from services.dashboard.models import create_tables, db
    from services.dashboard.secret import session_secret
    from services.dashboard.security import register_security
    from services.dashboard.shared_lockout import SharedLockout

    db.init_app(app)
    with app.app_context():
        create_tables(db.engine)  # /tasks reads the results store's table too
        if not app.config.get("SECRET_KEY"):
            # The same in every gunicorn worker, and never derived from the password.
            app.config["SECRET_KEY"] = session_secret(settings.secret_key, db.engine)
    app.extensions.setdefault("agentq.login_lockout", SharedLockout.from_url(
        settings.redis_url, settings.namespace))
    register_security(app)

    from services.dashboard.views import alerts, dead, metrics, overview, settings_page, tasks
    from services.dashboard.views.chrome import register_chrome

    app.extensions.setdefault("agentq.dead_letters", dead.dead_letter_queue(settings))
    for blueprint in (overview.bp, tasks.bp, dead.bp, alerts.bp, settings_page.bp, metrics.bp):
        app.register_blueprint(blueprint)
    register_chrome(app)
    return app


def _limiter_rpm(settings: Settings) -> int:
    """Return the providers' summed RPM budget, which caps the suggested workers."""
    from services.common.config import ConfigError

    try:
        config = settings.tier_table()
    except (ConfigError, ValueError):
        return 0  # the workers will refuse a broken tier table; the dashboard still serves
    return sum(provider.rpm for provider in config.providers.values())
