"""The dashboard's session secret: AGENTQ_SECRET_KEY, else a random one kept in the database.

Never derived from the admin password: a signed cookie anyone can get from `GET /login`
would then let the password be guessed offline.
"""

from __future__ import annotations

import secrets
import time

from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import IntegrityError

from services.dashboard.models import SessionSecret

ROW_ID = 1


def session_secret(configured: str, engine: Engine) -> str:
    """Return the configured secret, or the one stored in the database (created if absent)."""
    return configured or stored_secret(engine)


def stored_secret(engine: Engine) -> str:
    """Return the stored secret; the first caller stores a random one, racers read it back."""
    table = SessionSecret.__table__
    query = select(table.c.value).where(table.c.id == ROW_ID)
    with engine.connect() as conn:
        found = conn.execute(query).scalar()
    if found:
        return str(found)
    try:
        with engine.begin() as conn:
            conn.execute(insert(table).values(id=ROW_ID, value=secrets.token_hex(32),
                                              created_at=time.time()))
    except IntegrityError:
        pass  # another worker stored one between our read and our insert: theirs wins
    with engine.connect() as conn:
        return str(conn.execute(query).scalar_one())
