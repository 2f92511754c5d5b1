"""The dashboard's HTTP hardening: headers, who reads tasks, session secret, login lockout.

Against the real database (the shared `database_url` fixture) and Redis (the login lockout's
shared counts); the lockout's arithmetic is unit-tested with a fake clock.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.sessions import SecureCookieSessionInterface
from flask.testing import FlaskClient
from itsdangerous import BadSignature
from werkzeug.test import TestResponse

from services.common.models import Latency, Result, Task, Usage
from services.common.settings import Settings
from services.common.store import insert_task, make_engine, record_results
from services.dashboard.login_lockout import LockoutPolicy, LoginLockout, wait_s
from services.dashboard.secret import stored_secret
from services.dashboard.security import CONTENT_SECURITY_POLICY
from services.dashboard.shared_lockout import SharedLockout
from tests.dashboard_app import csrf_token, serve

PASSWORD = "correct horse"
PROMPT = "PROMPT-TEXT summarise the confidential memo"
OUTPUT = "OUTPUT-TEXT the memo says the merger is on"
TASK_ID = "secret-task-1"
OTHER_IP = {"REMOTE_ADDR": "10.9.8.7"}


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    """Yield the dashboard with an admin password set."""
    yield from serve(settings, PASSWORD)


@pytest.fixture
def open_app(settings: Settings) -> Iterator[Flask]:
    """Yield the dashboard without a password (read-only, open on localhost)."""
    yield from serve(settings, "")


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def stored_task(database_url: str) -> str:
    """Store one finished task whose prompt and output must stay private."""
    engine = make_engine(database_url)
    now = time.time()
    insert_task(engine, Task(id=TASK_ID, tenant="acme", kind="summarize", prompt=PROMPT,
                             submitted_at=now - 30))
    record_results(engine, [Result(
        task_id=TASK_ID, tenant="acme", status="succeeded", kind="summarize", tier="standard",
        model="gpt-4o", output=OUTPUT, usage=Usage(prompt_tokens=10, completion_tokens=5),
        latency_ms=Latency(queue=5, llm=50, total=60), finished_at=now - 5, attempts=1)])
    engine.dispose()
    return TASK_ID


def _csrf(client: FlaskClient) -> str:
    return csrf_token(client.get("/login").get_data(as_text=True))


def _login(client: FlaskClient, password: str = PASSWORD, token: str | None = None,
           environ: dict[str, str] | None = None, **kwargs: Any) -> TestResponse:
    return client.post("/login", data={"csrf_token": token or _csrf(client),
                                       "password": password},
                       environ_base=environ or {}, **kwargs)


# --- headers -----------------------------------------------------------------------------

@pytest.mark.parametrize("path, status", [
    ("/", 200), ("/api/metrics?window=15m", 200), ("/static/style.css", 200),
    ("/vendor/plotly.min.js", 200), ("/login", 200), ("/metrics", 200),
    ("/tasks", 302), ("/nowhere", 404), ("/api/metrics?window=nope", 400),
])
def test_every_response_carries_the_security_headers(client: FlaskClient, path: str,
                                                     status: int) -> None:
    response = client.get(path)
    assert response.status_code == status
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "script-src 'self';" in CONTENT_SECURITY_POLICY  # no inline script, no eval
    assert "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"


def test_templates_have_no_inline_script(client: FlaskClient, stored_task: str) -> None:
    """What the CSP forbids is not in any page: inline code or on* handlers."""
    _login(client)
    for path in ("/", "/tasks", f"/tasks/{stored_task}", "/alerts", "/settings", "/login"):
        html = client.get(path).get_data(as_text=True)
        for tag in re.findall(r"<script\b[^>]*>", html):
            assert "src=" in tag or 'type="application/json"' in tag, (path, tag)
        assert not re.search(r"<[^>]+\son[a-z]+\s*=", html), path
        assert "javascript:" not in html, path


# --- who reads prompts and outputs -------------------------------------------------------

def test_task_pages_need_the_admin_when_a_password_is_set(client: FlaskClient,
                                                          stored_task: str) -> None:
    page = client.get(f"/tasks/{stored_task}")
    assert page.status_code == 302
    assert page.headers["Location"] == f"/login?next=/tasks/{stored_task}"
    listing = client.get("/tasks?tenant=acme")
    assert listing.status_code == 302 and "next=/tasks?tenant%3Dacme" in \
        listing.headers["Location"].replace("%3F", "?")
    api = client.get(f"/tasks/{stored_task}", headers={"Accept": "application/json"})
    assert api.status_code == 401 and api.get_json()["error"]["code"] == "unauthorized"
    assert api.headers["WWW-Authenticate"].startswith("Bearer")
    for response in (page, listing, api):
        body = response.get_data(as_text=True)
        assert PROMPT not in body and OUTPUT not in body

    # The login sends the browser back where it was going.
    login = _login(client, query_string={"next": f"/tasks/{stored_task}"})
    assert login.status_code == 303 and login.headers["Location"] == f"/tasks/{stored_task}"
    detail = client.get(f"/tasks/{stored_task}")
    assert detail.status_code == 200
    assert PROMPT in detail.get_data(as_text=True) and OUTPUT in detail.get_data(as_text=True)
    assert detail.headers["Cache-Control"] == "no-store"
    assert stored_task in client.get("/tasks").get_data(as_text=True)


def test_the_bearer_password_opens_task_pages_too(app: Flask, stored_task: str) -> None:
    client = app.test_client()
    ok = client.get(f"/tasks/{stored_task}", headers={"Authorization": f"Bearer {PASSWORD}"})
    assert ok.status_code == 200 and OUTPUT in ok.get_data(as_text=True)
    wrong = client.get(f"/tasks/{stored_task}", headers={"Authorization": "Bearer guess",
                                                         "Accept": "application/json"})
    assert wrong.status_code == 401


def test_without_a_password_task_pages_stay_open(open_app: Flask, stored_task: str) -> None:
    client = open_app.test_client()
    detail = client.get(f"/tasks/{stored_task}")
    assert detail.status_code == 200 and OUTPUT in detail.get_data(as_text=True)
    assert client.get("/tasks").status_code == 200


@pytest.mark.parametrize("path", ["/", "/?window=15m&tenant=acme", "/alerts", "/api/alerts",
                                  "/api/metrics?window=15m", "/metrics", "/settings",
                                  "/api/thresholds", "/login"])
def test_open_pages_show_no_prompt_or_output(client: FlaskClient, stored_task: str,
                                             path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    assert PROMPT not in body and OUTPUT not in body and "merger" not in body


def test_next_cannot_leave_the_site(client: FlaskClient) -> None:
    for target in ("//evil.example/", "/\\evil.example/", "https://evil.example/"):
        response = _login(client, query_string={"next": target})
        assert response.status_code == 303 and response.headers["Location"] == "/settings"


# --- the session secret ------------------------------------------------------------------

def _old_key(password: str) -> str:
    return hmac.new(password.encode(), b"agentq-dashboard-session", hashlib.sha256).hexdigest()


def _session_cookie(client: FlaskClient, **kwargs: Any) -> str:
    response = client.get("/login", **kwargs)
    assert response.status_code == 200
    cookie = client.get_cookie("session")
    assert cookie is not None, "GET /login set no session cookie"
    return cookie.value


def test_the_secret_is_not_derived_from_the_password(app: Flask, client: FlaskClient) -> None:
    cookie = _session_cookie(client)
    assert app.secret_key != _old_key(PASSWORD)
    assert PASSWORD not in str(app.secret_key)
    cookies = SecureCookieSessionInterface()
    signed = cookies.get_signing_serializer(app)
    assert signed is not None and "csrf_token" in signed.loads(cookie)
    cracker = Flask("cracker")
    cracker.secret_key = _old_key(PASSWORD)  # what the old code signed with
    guessed = cookies.get_signing_serializer(cracker)
    assert guessed is not None
    with pytest.raises(BadSignature):
        guessed.loads(cookie)


def test_two_apps_on_one_database_sign_alike(app: Flask, settings: Settings) -> None:
    """Two gunicorn workers: a login made through one is honoured by the other."""
    for other in serve(settings, PASSWORD):
        assert other.secret_key == app.secret_key and len(str(app.secret_key)) == 64
        first = app.test_client()
        assert _login(first).status_code == 303
        second = other.test_client()
        session_cookie = first.get_cookie("session")
        assert session_cookie is not None
        second.set_cookie("session", session_cookie.value)
        assert second.get("/tasks").status_code == 200


def test_racing_workers_all_end_with_one_secret(app: Flask, database_url: str) -> None:
    from services.dashboard.models import SessionSecret

    engine = make_engine(database_url)
    with engine.begin() as conn:
        conn.execute(SessionSecret.__table__.delete())
    found: list[str] = []
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait()
        found.append(stored_secret(engine))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    engine.dispose()
    assert len(found) == 8 and len(set(found)) == 1


def test_agentq_secret_key_wins(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTQ_SECRET_KEY", "from-the-environment-" + "x" * 32)
    configured = Settings(namespace=settings.namespace, database_url=settings.database_url,
                          dashboard_password=PASSWORD)
    assert configured.secret_key.startswith("from-the-environment-")
    for app in serve(configured, PASSWORD):
        assert app.secret_key == configured.secret_key


# --- the Secure cookie -------------------------------------------------------------------

def _set_cookie(client: FlaskClient, **kwargs: Any) -> str:
    response = client.get("/login", **kwargs)
    cookies = response.headers.getlist("Set-Cookie")
    assert len(cookies) == 1 and cookies[0].startswith("session="), cookies
    return cookies[0]


def test_the_session_cookie_is_secure_over_tls(app: Flask) -> None:
    secure = _set_cookie(app.test_client(), base_url="https://localhost")
    assert "; Secure" in secure and "HttpOnly" in secure and "SameSite=Lax" in secure
    plain = _set_cookie(app.test_client())
    assert "Secure" not in plain
    # Without ProxyFix configured, a client's X-Forwarded-Proto is not believed.
    spoofed = _set_cookie(app.test_client(), headers={"X-Forwarded-Proto": "https"})
    assert "Secure" not in spoofed


# --- the login lockout over HTTP ---------------------------------------------------------

def test_the_eleventh_failed_login_is_refused_without_checking(app: Flask) -> None:
    client = app.test_client()
    token = _csrf(client)
    for _ in range(10):
        assert _login(client, "wrong", token).status_code == 401
    refused = _login(client, "wrong", token)
    assert refused.status_code == 429
    assert 0 < int(refused.headers["Retry-After"]) <= 15 * 60
    assert "Too many failed logins" in refused.get_data(as_text=True)
    assert _login(client, PASSWORD, token).status_code == 429  # right password, still locked
    as_api = _login(client, PASSWORD, token, headers={"Accept": "application/json"})
    assert as_api.status_code == 429 and as_api.get_json()["error"]["code"] == \
        "too_many_attempts"
    assert client.get("/tasks").status_code == 302  # not logged in
    # The bearer door is locked out alike.
    bearer = client.get("/tasks", headers={"Authorization": f"Bearer {PASSWORD}",
                                           "Accept": "application/json"})
    assert bearer.status_code == 401

    other = app.test_client()
    assert _login(other, PASSWORD, environ=OTHER_IP).status_code == 303


def test_workers_share_the_failure_count_through_redis(app: Flask, settings: Settings) -> None:
    for other in serve(settings, PASSWORD):
        first, second = app.test_client(), other.test_client()
        token = _csrf(first)
        for _ in range(10):
            assert _login(first, "wrong", token).status_code == 401
        assert _login(second, PASSWORD).status_code == 429


def test_time_lifts_the_lockout_and_success_resets(app: Flask) -> None:
    clock = FakeClock()
    app.extensions["agentq.login_lockout"] = LoginLockout(clock=clock)
    client = app.test_client()
    token = _csrf(client)
    for _ in range(10):
        _login(client, "wrong", token)
    assert _login(client, PASSWORD, token).status_code == 429
    clock.now += 15 * 60 + 1
    assert _login(client, PASSWORD, token).status_code == 303
    token = _csrf(client)  # the login started a new session
    for _ in range(9):  # the success forgot the earlier failures
        assert _login(client, "wrong", token).status_code == 401
    assert _login(client, PASSWORD, token).status_code == 303


def test_a_dead_redis_falls_back_to_counting_in_process() -> None:
    lockout = SharedLockout.from_url("redis://127.0.0.1:1/0", "agentq_test_noredis",
                                     LockoutPolicy(max_failures=3, window_s=60))
    for _ in range(3):
        assert lockout.retry_after("1.2.3.4") == 0
        lockout.failed("1.2.3.4")
    assert lockout.retry_after("1.2.3.4") > 0
    lockout.succeeded("1.2.3.4")
    assert lockout.retry_after("1.2.3.4") == 0


# --- the lockout's arithmetic ------------------------------------------------------------

POLICY = LockoutPolicy(max_failures=3, window_s=100)


@pytest.mark.parametrize("failures, now, expected", [
    ([], 0, 0),
    ([10, 20], 30, 0),                 # under the limit
    ([10, 20, 30], 30, 80),            # the oldest leaves the window at 110
    ([10, 20, 30], 109, 1),
    ([10, 20, 30], 110, 0),            # gone: two left
    ([5, 10, 20, 30], 30, 80),         # more than the limit: the third newest counts
    ([-500, 10, 20], 30, 0),           # long ago failures do not count
])
def test_wait_s(failures: list[float], now: float, expected: float) -> None:
    assert wait_s(failures, now, POLICY) == pytest.approx(expected)


def test_login_lockout_with_a_fake_clock() -> None:
    clock = FakeClock()
    lockout = LoginLockout(LockoutPolicy(max_failures=10, window_s=900), clock)
    for _ in range(10):
        assert lockout.retry_after("a") == 0
        lockout.failed("a")
        clock.now += 1
    assert lockout.retry_after("a") == pytest.approx(890)  # the first failure was at 1000
    assert lockout.retry_after("b") == 0  # another client is unaffected
    clock.now += 889
    assert lockout.retry_after("a") == pytest.approx(1)
    clock.now += 1  # the first failure leaves the window: one more try
    assert lockout.retry_after("a") == 0
    lockout.failed("a")
    assert lockout.retry_after("a") == pytest.approx(1)
    lockout.succeeded("a")
    assert lockout.retry_after("a") == 0


def test_login_lockout_forgets_the_oldest_clients_past_its_size() -> None:
    clock = FakeClock()
    lockout = LoginLockout(LockoutPolicy(max_failures=1, window_s=60), clock, max_keys=2)
    for key in ("a", "b", "c"):
        lockout.failed(key)
    assert lockout.retry_after("a") == 0
    assert lockout.retry_after("b") > 0 and lockout.retry_after("c") > 0
