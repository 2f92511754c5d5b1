"""agentq against an OpenAI-compatible server we did not write: llmock (PyPI), with a real
RPM quota, 429s with retry-after and x-ratelimit-* headers on every answer.

The issue's figures: a 30-RPM server and 200 tasks. The tier table gives no limits (as the
built-in OPENAI_BASE_URL path), or an RPM 20x too high: either way every task succeeds,
none `rate_limited`, and once the first minute has taught the limiter the provider's limit,
fewer than 10 % of its requests are refused.

llmock's bucket holds a minute, so the first 30 requests pass at once and the other 170
come at 0.5/s: ~6-7 minutes per case. So both cases run at the same time, each with its own
llmock, namespace and pipeline (a module fixture starts both; each test reads its own), and
`make test` runs this `llmock_slow` group as a second pytest beside the rest of the suite.
The work is mostly waiting, so the pipelines are small (one worker process each is enough
to show the limit shared through Redis: two here, with a few slots each).
AGENTQ_TEST_LLMOCK_RPM / AGENTQ_TEST_LLMOCK_TASKS change the figures for a quicker look.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import pytest

from bench.stack import AMQP_URL, Pipeline, free_port, http, running_pipeline, wait_until

pytestmark = pytest.mark.llmock_slow
RPM = int(os.environ.get("AGENTQ_TEST_LLMOCK_RPM", "30"))
TASKS = int(os.environ.get("AGENTQ_TEST_LLMOCK_TASKS", "200"))
LLMOCK = Path(sys.executable).with_name("llmock")
# The provider's pace bounds a case; the rest is start-up, the first burst and slack.
CASE_S = (TASKS - RPM) / (RPM / 60) + 180
SCENARIOS = {"no_limits": 0, "rpm_twenty_times_too_high": RPM * 20}


@dataclass(frozen=True)
class Outcome:
    """What one case left: the tasks' bodies, the provider's figures, a limiter.lowered."""

    done: dict[str, dict[str, Any]]
    figures: dict[str, Any]
    lowered: dict[str, Any] | None


@contextmanager
def llmock(log_dir: Path) -> Iterator[str]:
    """Run llmock with an RPM quota; yield its base URL (without /v1)."""
    port = free_port()
    with open(log_dir / "llmock.log", "wb") as log:
        server = subprocess.Popen([str(LLMOCK), "serve", "--host", "127.0.0.1", "--port",
                                   str(port), "--rpm", str(RPM), "--log-level", "warning"],
                                  stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http("GET", f"{url}/v1/models")[0] == 200, 30, "llmock")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


def _wait_done(pipeline: Pipeline, ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    """Poll until every task finished, cheaply: tasks finish about in submission order, so
    each pass stops at the first one still open (the machine runs the suite meanwhile)."""
    done: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while len(done) < len(ids):
        for task_id in (i for i in ids if i not in done):
            body = pipeline.task(task_id)
            if body["status"] not in ("succeeded", "failed"):
                break
            done[task_id] = body
        else:
            continue
        assert time.monotonic() < deadline, f"{len(ids) - len(done)} tasks still open"
        time.sleep(2)
    return done


def _requests(url: str) -> list[dict[str, Any]]:
    status, body = http("GET", f"{url}/_llmock/requests", timeout=30)
    assert status == 200, body
    return [r for r in body["requests"] if r["path"].endswith("/chat/completions")]


def _figures(done: dict[str, dict[str, Any]], records: list[dict[str, Any]]) -> dict[str, Any]:
    first = min(r["started_at"] for r in records)
    later = [r for r in records if r["started_at"] - first > 60]
    return {
        "tasks": len(done), "requests": len(records),
        "refused": sum(r["status"] == 429 for r in records),
        "requests_after_1min": len(later),
        "refused_after_1min": sum(r["status"] == 429 for r in later),
        "seconds": round(max(r["ended_at"] for r in records) - first, 1),
        "failed": sorted({b["result"]["error"]["code"] for b in done.values()
                          if b["status"] != "succeeded"}),
        "attempts": dict(Counter(b["result"]["attempts"] for b in done.values())),
    }


def _case(tmp: Path, rpm: int) -> Outcome:
    """Run TASKS tasks through a pipeline of their own against an llmock of their own."""
    with llmock(tmp) as provider, running_pipeline(
            tmp, workers=2, concurrency=4, provider=provider, rpm=rpm,
            services=("ingest", "router", "recorder")) as pipeline:
        # Idle for minutes between the bind and the read: no heartbeats, or the broker
        # drops a connection that pika's blocking client does not service meanwhile.
        parameters = pika.URLParameters(AMQP_URL)
        parameters.heartbeat = 0
        connection = pika.BlockingConnection(parameters)
        channel = connection.channel()
        queue = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(queue, f"{pipeline.ns}.events", "limiter.lowered")
        tasks = [{"prompt": f"llmock {i} {uuid.uuid4()}", "tenant": f"t{i % 3}",
                  "tier": "cheap"} for i in range(TASKS)]
        ids = []
        for chunk in range(0, len(tasks), 100):
            status, body = http("POST", f"{pipeline.ingest}/v1/tasks", tasks[chunk:chunk + 100])
            assert status == 202, body
            ids += [item["id"] for item in body]
        done = _wait_done(pipeline, ids, CASE_S)
        figures = _figures(done, _requests(provider))
        print(json.dumps({"rpm_configured": rpm, **figures}))  # shown when a test fails
        _, _, event = channel.basic_get(queue, auto_ack=True)
        connection.close()
    return Outcome(done, figures, json.loads(event)["data"] if event else None)


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Future[Outcome]]]:
    """Start both cases at once; each test waits for its own."""
    with ThreadPoolExecutor(max_workers=len(SCENARIOS)) as pool:
        yield {name: pool.submit(_case, tmp_path_factory.mktemp(name), rpm)
               for name, rpm in SCENARIOS.items()}


def _check(outcome: Outcome) -> None:
    done, figures = outcome.done, outcome.figures
    assert {body["status"] for body in done.values()} == {"succeeded"}, figures
    # Waiting for capacity spends no attempt. A task's own error may (a Redis connect
    # timeout on this busy host cost one task a second attempt in a run with no 429 at all);
    # if 429s spent attempts, the first minute's burst alone would spend several.
    extra = sum(body["result"]["attempts"] - 1 for body in done.values())
    assert extra <= TASKS // 100, figures
    # The steady state was reached: most tasks were asked for after the first minute.
    assert figures["requests_after_1min"] >= (TASKS - RPM) // 2, figures
    assert figures["refused_after_1min"] < 0.1 * figures["requests_after_1min"], figures


@pytest.mark.timeout(CASE_S + 120)
def test_no_limits_configured(cases: dict[str, Future[Outcome]]) -> None:
    outcome = cases["no_limits"].result()
    _check(outcome)
    # The limiter waited for capacity rather than the tasks for retries.
    assert max(body["result"]["latency_ms"]["limiter"] for body in outcome.done.values()
               ) > 10_000
    assert outcome.lowered is None, outcome.lowered  # nothing configured, nothing to lower


@pytest.mark.timeout(CASE_S + 120)
def test_a_configured_rpm_twenty_times_too_high(cases: dict[str, Future[Outcome]]) -> None:
    outcome = cases["rpm_twenty_times_too_high"].result()
    _check(outcome)
    assert outcome.lowered is not None, "no limiter.lowered event"
    event = outcome.lowered
    assert (event["pool"], event["limit"], event["configured"], event["advertised"]) == (
        "mock", "rpm", RPM * 20, RPM)
