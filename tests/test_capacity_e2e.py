"""A 429 never fails a task, end to end: waits spend no attempts, and only the wait budget
(AGENTQ_RATE_LIMIT_WAIT_S) ends them, with `rate_limited` and how long the task waited."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator

import pytest

from bench.stack import Pipeline, running_pipeline

pytestmark = pytest.mark.database
# Long enough for a few 429s paced by the adaptive rule (the mock advertises no limits).
WAIT_S = 12


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    # Two attempts only: a 429 that spent one would soon fail the task.
    with running_pipeline(tmp_path_factory.mktemp("capacity"), workers=1, concurrency=4,
                          env={"AGENTQ_MAX_ATTEMPTS": "2",
                               "AGENTQ_RATE_LIMIT_WAIT_S": str(WAIT_S)}) as running:
        yield running


def test_many_429s_spend_no_attempts(pipeline: Pipeline) -> None:
    pipeline.control(fail_next={"count": 5, "status": 429, "retry_after": 0.05})
    task_id = pipeline.submit({"prompt": f"patient {uuid.uuid4()}"})
    result = pipeline.wait_done([task_id], timeout=60)[task_id]["result"]
    assert result["status"] == "succeeded" and result["attempts"] == 1, result
    assert pipeline.stats()["rate_limited"] >= 5
    latency = result["latency_ms"]
    assert latency["limiter"] > 0 and latency["llm"] >= 0
    assert latency["limiter"] + latency["llm"] <= latency["total"]


def test_the_wait_budget_fails_the_task_rate_limited(pipeline: Pipeline) -> None:
    pipeline.control(fail_next={"count": 100_000, "status": 429, "retry_after": 0.2})
    started = time.monotonic()
    try:
        task_id = pipeline.submit({"prompt": f"doomed by limits {uuid.uuid4()}"})
        result = pipeline.wait_done([task_id], timeout=60)[task_id]["result"]
    finally:
        pipeline.control(fail_next={"count": 0})
    assert result["status"] == "failed" and result["attempts"] == 1, result
    assert result["error"]["code"] == "rate_limited"
    message = result["error"]["message"]
    assert re.search(r"waited \d+ s for capacity on provider 'mock'", message), message
    assert "AGENTQ_RATE_LIMIT_WAIT_S" in message
    assert WAIT_S <= time.monotonic() - started < WAIT_S + 20
