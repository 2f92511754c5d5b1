"""HTTP hardening: security headers on every response, the session cookie Secure over TLS.

The pages load scripts only from this origin (Plotly included, from /vendor/): no inline
script, no event-handler attributes. Inline `style=` attributes and the styles Plotly adds
at runtime need `style-src 'unsafe-inline'`, which cannot run code.
"""

from __future__ import annotations

from flask import Flask, Response, has_request_context, request
from flask.sessions import SecureCookieSessionInterface

CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data:",
    "connect-src 'self'",
    "frame-ancestors 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "object-src 'none'",
))
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


class TlsAwareSessionInterface(SecureCookieSessionInterface):
    """Mark the session cookie Secure whenever the request came over TLS.

    `request.is_secure` follows X-Forwarded-Proto only behind a configured ProxyFix, so a
    client cannot switch it by sending the header. SESSION_COOKIE_SECURE=True forces it.
    """

    def get_cookie_secure(self, app: Flask) -> bool:
        if app.config["SESSION_COOKIE_SECURE"]:
            return True
        return has_request_context() and request.is_secure


def _add_headers(response: Response) -> Response:
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def register_security(app: Flask) -> None:
    """Hook the headers and the TLS-aware session cookie onto the app."""
    app.session_interface = TlsAwareSessionInterface()
    app.after_request(_add_headers)
