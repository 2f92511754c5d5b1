"""The collector against the real RabbitMQ and database, and `agentq dashboard`'s process
supervision. Each test runs in its own namespace `agentq_test_<uuid8>`, deleted afterwards
(the shared `namespace` fixture uses services.common.topology.delete_topology)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bench.stack import ROOT, free_port, http, wait_until
from services.common.models import Event, Latency, Result
from services.common.settings import Settings
from services.common.topology import Names, declare
from services.dashboard.collector import Options, open_engine, serve
from services.dashboard.models import AlertState, QueueSample, Rollup, Worker
from tests.conftest import Rabbit

# management_url=None: try the management API on the broker's host; when the plugin is off
# the sampler degrades to passive declares, which is what the assertions rely on.
FAST = Options(flush_interval_s=0.05, sample_interval_s=0.3, eval_interval_s=0.3,
               management_url=None)


class Running:
    """The collector's serve() on a thread of its own, stopped like SIGTERM would."""

    def __init__(self, settings: Settings, options: Options) -> None:
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(settings, options))
        self._thread.start()

    def _run(self, settings: Settings, options: Options) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(serve(settings, self._stop, options))
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        assert not self._thread.is_alive(), "the collector did not stop"
        self._loop.close()
        if self.error is not None:
            raise self.error


@pytest.fixture
def names(settings: Settings) -> Names:
    names = Names(settings.namespace)
    asyncio.run(declare(settings.amqp_url, names))
    return names


def _result(n: int, status: str = "succeeded") -> Result:
    return Result(task_id=f"c-{n}", tenant="acme", status=status, kind="extract", tier="cheap",
                  cost_usd=0.002, latency_ms=Latency(queue=20, llm=300, total=330))


def test_collector_rolls_up_messages_and_samples_queues(
        settings: Settings, names: Names, rabbit: Rabbit,
        eventually: Callable[..., Any]) -> None:
    for n in range(5):
        result = _result(n, "failed" if n == 4 else "succeeded")
        rabbit.publish(names.results, f"acme.{result.status}", result.model_dump_json())
    for event in (Event(type="task.retry", tenant="acme", data={"tier": "cheap"}),
                  Event(type="worker.heartbeat", data={"worker_id": "w-1", "concurrency": 4}),
                  Event(type="brand.new.kind", data={"anything": [1, 2]})):
        rabbit.publish(names.events, event.type, event.model_dump_json())
    rabbit.publish(names.results, "acme.succeeded", b"not a result")
    for n in range(3):  # nobody consumes the tasks queue here: its depth stays 3
        rabbit.publish(names.tasks, "task", f'{{"n": {n}}}')

    engine = open_engine(settings.database_url)
    collector = Running(settings, FAST)
    try:
        def rolled_up() -> bool:
            with Session(engine) as session:
                counted = session.scalar(select(func.sum(Rollup.count)).where(Rollup.res == 60))
                retries = session.scalar(select(func.sum(Rollup.retries))
                                         .where(Rollup.res == 60))
                return counted == 5 and retries == 1

        def sampled() -> int | None:
            with Session(engine) as session:
                return session.scalar(select(QueueSample.depth).where(
                    QueueSample.queue == names.tasks).order_by(QueueSample.ts.desc()).limit(1))

        def evaluated() -> bool:
            with Session(engine) as session:
                return (session.scalar(select(func.count()).select_from(AlertState)) or 0) == 7

        eventually(rolled_up, timeout=15)
        assert eventually(sampled, timeout=15) == 3
        eventually(evaluated, timeout=15)
    finally:
        collector.stop()

    with Session(engine) as session:
        failed = session.scalar(select(func.sum(Rollup.count)).where(
            Rollup.res == 3600, Rollup.status == "failed"))
        worker = session.get(Worker, "w-1")
        queues = set(session.scalars(select(QueueSample.queue).distinct()))
    engine.dispose()
    assert failed == 1 and worker is not None and worker.concurrency == 4
    assert set(names.monitored_queues()) <= queues
    assert rabbit.count(names.dashboard_results) == 0  # every message acked after its commit
    assert rabbit.count(names.dashboard_events) == 0
    parked = rabbit.get(names.rejected)
    assert parked.body == b"not a result" and "not a Result" in parked.headers[
        "x-agentq-error"]


@pytest.fixture
def dashboard_process(settings: Settings, names: Names,
                      tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    env = {**os.environ, "AGENTQ_NAMESPACE": settings.namespace,
           "AGENTQ_DATABASE_URL": settings.database_url, "AGENTQ_METRICS_PORT": "-1",
           "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "dashboard.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "services.dashboard.serve", "--port", str(port), "--workers", "1",
         "--eval-interval", "1", "--management-url", ""],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    yield process, port
    if process.poll() is None:  # the test failed before stopping it: clean up by force
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    log.close()


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def test_dashboard_command_serves_and_stops_its_children_on_sigterm(
        dashboard_process: tuple[subprocess.Popen[bytes], int], names: Names) -> None:
    process, port = dashboard_process
    base = f"http://127.0.0.1:{port}"

    def queues_sampled() -> bool:
        status, doc = http("GET", f"{base}/api/metrics?window=15m", timeout=2)
        return status == 200 and any(q["depth"] is not None for q in doc["queues"])

    wait_until(queues_sampled, 20, "the dashboard to answer with sampled queues")
    status, _ = http("GET", f"{base}/settings", timeout=2)
    assert status == 200
    children = _children(process.pid)
    assert len(children) == 2  # the collector and gunicorn

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    for child in children:
        with pytest.raises(ProcessLookupError):
            os.kill(child, 0)
