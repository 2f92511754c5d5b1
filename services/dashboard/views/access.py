"""Who may change settings and read tasks: nobody without a password, the admin with one."""

from __future__ import annotations

import hmac
from typing import Literal

from flask import current_app, g, request, session

from services.common.settings import Settings
from services.dashboard.login_lockout import Lockout

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


def _lockout() -> Lockout:
    found: Lockout = current_app.extensions["agentq.login_lockout"]
    return found


def _client() -> str:
    # The peer address: behind a proxy it is the proxy's unless ProxyFix is configured.
    return request.remote_addr or "unknown"


def login_wait_s() -> float:
    """Return how long this client must wait before trying a password again (0 = now)."""
    return _lockout().retry_after(_client())


def attempt_login(candidate: str) -> bool:
    """Check a password and count the outcome against this client's lockout."""
    ok = password_matches(candidate)
    if ok:
        _lockout().succeeded(_client())
    else:
        _lockout().failed(_client())
    return ok


def _bearer_admin() -> bool:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    if "agentq_bearer_ok" not in g:  # checked (and counted) once per request
        g.agentq_bearer_ok = login_wait_s() == 0 and attempt_login(token.strip())
    return bool(g.agentq_bearer_ok)


def is_admin() -> bool:
    """Tell whether this request comes from a logged-in admin or carries the bearer token."""
    if not password():
        return False
    return session.get("admin") is True or _bearer_admin()


def edit_access() -> Access:
    """Return whether settings may be edited now, are locked, or need the admin login."""
    if not password():
        return "locked"  # the contract: no password = read-only dashboard
    return "allowed" if is_admin() else "login"
