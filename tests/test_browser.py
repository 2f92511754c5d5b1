"""The dashboard in a real browser: headless Chromium against the whole stack as processes.

Starts the simulated provider (with latency, so a queue builds), ingest, intake, router,
recorder, one slow worker and the dashboard; sends a burst of tasks; opens the overview and
waits for the charts to be drawn with data; logs in, lowers the queue-depth threshold in the
settings form (after a rejected negative value) and sees the alert banner appear while a
second burst is queued. Screenshots go to tests/artifacts/ (ignored by git) for a person to
look at. Chromium is Debian's /usr/bin/chromium driven by Python Playwright: a missing
browser or package fails the test, it is never skipped.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from bench.stack import ROOT, Stack, http, running_pipeline

pytestmark = pytest.mark.database
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking"]
ARTIFACTS = ROOT / "tests" / "artifacts"
VIEWPORT = {"width": 1366, "height": 768}  # a common laptop screen, the tighter one
PASSWORD = "browser-test-password"
BURST = 300
# Charts that must show data after a burst. The limiter chart is left out: nothing in the
# stack publishes `limiter.stats` events yet, so it says "No limiter stats yet".
DRAWN_CHARTS = ("chart-throughput", "chart-queue-depth", "chart-latency", "chart-cost",
                "chart-cache", "chart-tiers")
KINDS = ("classify", "extract", "classify", "summarize", "extract", "reason")
TENANTS = ("acme", "globex", "initech")


@dataclass
class Dashboard:
    """Handles on the running stack and its dashboard."""

    stack: Stack
    ingest: str
    url: str

    def burst(self, label: str, count: int = BURST, per_request: int = 100) -> None:
        """Submit `count` distinct tasks over HTTP, `per_request` per POST."""
        run = uuid.uuid4().hex[:6]
        for start in range(0, count, per_request):
            tasks = [{"prompt": f"{label} {run} task {i}: summarise the ticket",
                      "kind": KINDS[i % len(KINDS)], "tenant": TENANTS[i % len(TENANTS)]}
                     for i in range(start, min(start + per_request, count))]
            status, body = http("POST", f"{self.ingest}/v1/tasks", tasks)
            assert status == 202, body


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    with running_pipeline(tmp_path_factory.mktemp("browser"), workers=1, concurrency=4,
                          env={"AGENTQ_DASHBOARD_PASSWORD": PASSWORD},
                          mock_args=("--latency-ms", "200", "--jitter-ms", "40", "--seed", "7"),
                          dashboard=True, dashboard_args=("--eval-interval", "2")) as running:
        yield Dashboard(running.stack, running.ingest, running.dashboard)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert CHROMIUM.exists(), (f"{CHROMIUM} is missing: install Debian's chromium "
                               "(`make browser-deps` or `apt-get install -y chromium`)")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
    page = context.new_page()
    page.set_default_timeout(15_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # The dashboard sends a strict Content-Security-Policy: anything it blocks is a bug.
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error"
            and "Content Security Policy" in msg.text else None)
    page.errors = errors  # type: ignore[attr-defined]
    yield page
    context.close()


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def test_dashboard_in_a_browser(dashboard: Dashboard, page: Page) -> None:
    try:
        _walk_through(dashboard, page)
    except BaseException:
        shot(page, "failure.png")
        dashboard.stack.print_logs("dashboard", "worker-1")
        raise
    assert page.errors == [], page.errors  # type: ignore[attr-defined]


def _walk_through(dash: Dashboard, page: Page) -> None:
    dash.burst("first")

    # The overview: charts drawn with data, headline numbers counting tasks.
    page.goto(f"{dash.url}/?window=15m")
    page.wait_for_function(
        "ids => ids.every(id => Number(document.getElementById(id).dataset.points || 0) > 0)",
        arg=list(DRAWN_CHARTS), timeout=60_000)
    page.wait_for_function(
        "() => /^[1-9][\\d,]* tasks/.test(document.querySelector('#card-throughput .sub')"
        ".textContent)", timeout=30_000)
    assert page.locator("#tenant-table tbody tr").count() == len(TENANTS)
    assert page.locator(".main-svg").count() >= len(DRAWN_CHARTS)  # Plotly really drew
    assert page.locator("#alert-banner").is_hidden()
    shot(page, "overview.png")

    # Prompts and outputs are the admin's: the tasks page asks for the login first.
    page.goto(f"{dash.url}/tasks")
    page.wait_for_url(re.compile(r"/login\?next=/tasks$"))
    assert page.locator("#password").is_visible()

    # Read-only until the admin logs in.
    page.goto(f"{dash.url}/settings")
    assert page.locator("#save").is_disabled()
    page.click("#settings-login a")
    page.fill("#password", PASSWORD)
    page.click("#login")
    page.wait_for_url(re.compile(r"/settings$"))
    assert "Logged in" in page.locator(".flash").first.inner_text()
    assert page.locator("#save").is_enabled()

    # The tasks page lists what ran; one task shows its input and output.
    page.goto(f"{dash.url}/tasks")
    page.wait_for_selector("#task-table tbody tr td.mono a")
    assert page.locator("#task-table tbody tr").count() > 10
    shot(page, "tasks.png")
    page.click("#task-table tbody tr td.mono a >> nth=0")
    page.wait_for_selector("#latency")
    shot(page, "task.png")
    page.goto(f"{dash.url}/settings")

    # A negative value and a word are refused, each with its own message; nothing is saved.
    page.fill("#queue_depth", "-5")
    page.fill("#queue_depth_for_s", "soon")
    page.click("#save")
    page.wait_for_selector("#error-queue_depth")
    assert "must be 0 or more" in page.inner_text("#error-queue_depth")
    assert "must be a number" in page.inner_text("#error-queue_depth_for_s")
    assert "Nothing was saved" in page.inner_text(".flash.error")
    shot(page, "settings-error.png")
    assert _thresholds(dash)["queue_depth"] != -5

    # Lower the queue-depth threshold to 1 message, at once, and switch the rule on.
    page.fill("#queue_depth", "1")
    page.fill("#queue_depth_for_s", "0")
    page.check("#queue_depth_enabled")
    page.fill("#self_host_gpu_hour_usd", "2")  # and price self-hosting on the overview
    page.click("#save")
    page.wait_for_selector(".flash.ok >> text=Thresholds saved")
    assert page.input_value("#queue_depth") == "1"
    assert page.locator("#error-queue_depth").count() == 0
    saved = _thresholds(dash)
    assert (saved["queue_depth"], saved["queue_depth_for_s"]) == (1, 0)
    assert saved["queue_depth_enabled"] is True and saved["self_host_gpu_hour_usd"] == 2
    shot(page, "settings.png")

    # More work queues up than one slow worker takes: the banner shows the alert.
    dash.burst("second")
    page.goto(f"{dash.url}/")
    banner_item = page.locator('#alert-banner li[data-rule="queue_depth"]')
    banner_item.wait_for(state="visible", timeout=45_000)
    text = banner_item.inner_text()
    assert "Queue depth" in text and "threshold 1 " in text, text  # the new threshold
    assert page.locator("#alert-banner").is_visible()
    assert "bad" in (page.get_attribute("#card-backlog", "class") or "")
    # One $2/h GPU around the clock, beside what the API costs at this volume.
    assert page.inner_text("#card-self-hosting .value") == "$1,460"
    assert "deferred waiting" in page.inner_text("#card-batches .sub")
    shot(page, "alert.png")


def _thresholds(dash: Dashboard) -> dict[str, Any]:
    status, body = http("GET", f"{dash.url}/api/thresholds")
    assert status == 200, body
    return dict(body)
