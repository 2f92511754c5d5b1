"""Who may change settings: nobody without a password, the admin with one."""

from __future__ import annotations

import hmac
from typing import Literal

from flask import current_app, request, session

from services.common.settings import Settings

Access = Literal["allowed", "locked", "login"]


def settings() -> Settings:
    found: Settings = current_app.extensions["agentq.settings"]
    return found


def password() -> str:
    return settings().dashboard_password


def password_matches(candidate: str) -> bool:
    """Compare in constant time so timing does not leak the password."""
    expected = password()
    return bool(expected) and hmac.compare_digest(candidate.encode(), expected.encode())


def is_admin() -> bool:
    """Tell whether this request comes from a logged-in admin or carries the bearer token."""
    if not password():
        return False
    if session.get("admin") is True:
        return True
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return scheme.lower() == "bearer" and password_matches(token.strip())


def edit_access() -> Access:
    """Return whether settings may be edited now, are locked, or need the admin login."""
    if not password():
        return "locked"  # the contract: no password = read-only dashboard
    return "allowed" if is_admin() else "login"
