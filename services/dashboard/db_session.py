"""The session type the dashboard's queries take: a plain SQLAlchemy session (tests, the
collector) or Flask-SQLAlchemy's request-scoped proxy of one (`db.session`, the views)."""

from __future__ import annotations

from typing import Any, TypeAlias

from sqlalchemy.orm import Session, scoped_session

DbSession: TypeAlias = Session | scoped_session[Any]
