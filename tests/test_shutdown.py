"""Scale-down mid-run: SIGTERMed workers finish what they hold, and no task runs twice."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack import (
    ScratchDatabase,
    Stack,
    delete_namespace,
    free_port,
    http,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.database
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
REDIS_URL = "redis://127.0.0.1:6379/0"
TASKS = 150
LATENCY_MS = 300
CONCURRENCY = 4  # 3 workers x 4 slots / 0.3 s: the run lasts several seconds
GRACE_S = 20.0


class Run:
    def __init__(self, stack: Stack, ingest: str, mock: str) -> None:
        self.stack, self.ingest, self.mock = stack, ingest, mock

    def stats(self) -> dict[str, int]:
        status, body = http("GET", f"{self.mock}/stats")
        assert status == 200, body
        return dict(body)


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Run]:
    ns = f"agentq_test_{uuid.uuid4().hex[:8]}"
    database = ScratchDatabase(ns, tmp_path)
    mock_port, ingest_port = free_port(), free_port()
    mock = f"http://127.0.0.1:{mock_port}"
    config = write_config(tmp_path / "agentq.toml", f"{mock}/v1")
    stack = Stack({"AGENTQ_NAMESPACE": ns, "AGENTQ_DATABASE_URL": database.url,
                   "AGENTQ_CONFIG": str(config), "AGENTQ_INGEST_PORT": str(ingest_port),
                   "AGENTQ_AMQP_URL": AMQP_URL, "AGENTQ_REDIS_URL": REDIS_URL,
                   "AGENTQ_METRICS_PORT": "-1"}, tmp_path)
    try:
        stack.start("mockllm", "mockllm", "--port", str(mock_port),
                    "--latency-ms", str(LATENCY_MS))
        for name in ("ingest", "intake", "router", "recorder"):
            stack.start(name, name)
        for i in (1, 2, 3):
            start_worker(stack, i)
        wait_until(lambda: http("GET", f"{mock}/healthz")[0] == 200, 30, "mockllm")
        ingest = f"http://127.0.0.1:{ingest_port}"
        wait_until(lambda: http("GET", f"{ingest}/healthz")[0] == 200, 60, "ingest /healthz")
        yield Run(stack, ingest, mock)
    finally:
        stack.stop_all()
        print_logs(stack)
        delete_namespace(AMQP_URL, REDIS_URL, ns)
        database.drop()


def print_logs(stack: Stack) -> None:
    """Print each process's last lines (pytest shows them when the test failed)."""
    for log in sorted(stack.log_dir.glob("*.log")):
        print(f"--- {log.name}\n{log.read_text(errors='replace')[-1500:]}")


def start_worker(stack: Stack, i: int) -> None:
    stack.start(f"worker-{i}", "worker", "--concurrency", str(CONCURRENCY),
                "--grace", str(GRACE_S))


def test_sigterm_mid_run_loses_nothing_and_runs_nothing_twice(run: Run) -> None:
    # Let the workers register their consumers before the backlog arrives.
    wait_until(lambda: run.stats()["requests"] == 0 and all(
        "consuming" in run.stack.log(f"worker-{i}") for i in (1, 2, 3)), 60, "three workers")
    ids: list[str] = []
    for start in range(0, TASKS, 50):
        status, body = http("POST", f"{run.ingest}/v1/tasks", [
            {"prompt": f"shutdown {n} {uuid.uuid4()}", "kind": "classify", "cache": "off"}
            for n in range(start, start + 50)])
        assert status == 202, body
        ids += [item["id"] for item in body]

    drained: list[int] = []
    for victim, replacement, after in ((1, 4, 20), (2, 5, 60)):
        wait_until(lambda a=after: run.stats()["completed"] >= a, 60, f"{after} completions")
        assert run.stats()["completed"] < TASKS, "the run ended before the scale-down"
        code = run.stack.stop(f"worker-{victim}", timeout=GRACE_S + 10)
        assert code == 0, f"worker-{victim} exited with {code}"
        held = re.search(r"draining (\d+) in flight", run.stack.log(f"worker-{victim}"))
        assert held, run.stack.log(f"worker-{victim}")[-2000:]
        drained.append(int(held.group(1)))
        start_worker(run.stack, replacement)
    assert max(drained) > 0, "no worker held a task when it was told to stop"

    done: dict[str, dict[str, object]] = {}

    def all_done() -> bool:
        for task_id in ids:
            if task_id not in done:
                status, body = http("GET", f"{run.ingest}/v1/tasks/{task_id}")
                if status == 200 and body["status"] in ("succeeded", "failed"):
                    done[task_id] = body
        return len(done) == TASKS

    wait_until(all_done, 90, f"{TASKS} tasks to finish", interval=0.2)
    results = [body["result"] for body in done.values()]
    assert {r["status"] for r in results} == {"succeeded"}  # type: ignore[index]
    assert {r["attempts"] for r in results} == {1}  # type: ignore[index]
    stats = run.stats()
    # One provider call per task: nothing was cut off mid-call and run again elsewhere.
    assert stats["completed"] == TASKS and stats["requests"] == TASKS, stats
