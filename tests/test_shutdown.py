"""Scale-down mid-run: SIGTERMed workers finish what they hold, and no task runs twice."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.stack import Pipeline, http, running_pipeline, wait_until

pytestmark = pytest.mark.database
TASKS = 150
LATENCY_MS = 300
CONCURRENCY = 4  # 3 workers x 4 slots / 0.3 s: the run lasts several seconds
GRACE_S = 20.0


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Pipeline]:
    with running_pipeline(tmp_path, workers=3, concurrency=CONCURRENCY,
                          worker_args=("--grace", str(GRACE_S)),
                          mock_args=("--latency-ms", str(LATENCY_MS)),
                          print_logs=True) as running:
        yield running


def test_sigterm_mid_run_loses_nothing_and_runs_nothing_twice(run: Pipeline) -> None:
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
        run.start_worker(replacement)
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
