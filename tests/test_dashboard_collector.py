"""The collector against the real RabbitMQ and database, and `agentq dashboard`'s process
supervision. Each test runs in its own namespace `agentq_test_<uuid8>`, deleted afterwards
(the shared `namespace` fixture uses services.common.topology.delete_topology)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bench.stack import ROOT, free_port, http, wait_until
from services.common.events import EVENTS
from services.common.models import Event, Latency, Result
from services.common.settings import Settings
from services.common.topology import DASHBOARD_EVENTS, Names
from services.dashboard import alert_store, create_app
from services.dashboard.collector import Options, open_engine, serve
from services.dashboard.models import AlertState, QueueSample, Rollup, Worker, db
from services.dashboard.rollup import Delta, fold_event
from services.dashboard.thresholds import RULES
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


# Every field any folded event reads, so that an event type the rollup uses shows in the Delta.
_EVERY_FIELD = {"tier": "cheap", "kind": "extract", "worker_id": "w-1", "pool": "mock",
                "from": 1, "to": 2, "agreed": True, "grants": 1}


@pytest.mark.parametrize("type_", [*sorted(EVENTS), "brand.new.kind"])
def test_the_dashboard_queue_gets_exactly_the_events_the_rollup_folds(type_: str) -> None:
    delta = Delta()
    fold_event(delta, Event(type=type_, tenant="acme", data=_EVERY_FIELD))
    assert (not delta.is_empty()) == (type_ in DASHBOARD_EVENTS)


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
                  Event(type="worker.heartbeat", data={"worker_id": "w-1", "concurrency": 4})):
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
                return (session.scalar(select(func.count()).select_from(AlertState))
                        or 0) == len(RULES)

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


# --- the broker going away ---------------------------------------------------------------------

class Relay:
    """A TCP relay to the test broker that can be cut and restored: RabbitMQ goes away for
    the collector alone while the shared broker keeps running."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()

    def up(self) -> None:
        with self._lock:
            if self._listener is not None:
                return
            self._listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR
            listener = self._listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        """Refuse new connections and cut the open ones, as a broker that died would."""
        with self._lock:
            doomed, self._open = self._open, []
            if self._listener is not None:
                doomed.append(self._listener)
                self._listener = None
        for sock in doomed:
            _shut(sock)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                return
            upstream.settimeout(None)
            with self._lock:
                if listener is not self._listener:  # cut while this one was being accepted
                    _shut(client)
                    _shut(upstream)
                    return
                self._open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        _shut(source)
        _shut(sink)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in accept() or recv()
    except OSError:
        pass
    sock.close()


def _broker_state(engine: Any) -> str | None:
    with Session(engine) as session:
        row = session.get(AlertState, "broker_unreachable")
        return row.state if row else None


def _alert_threshold(engine: Any, seconds: float) -> None:
    with Session(engine) as session:
        alert_store.save_values(session, {"broker_unreachable": seconds}, time.time())
        session.commit()


QUICK = Options(flush_interval_s=0.05, sample_interval_s=0.3, eval_interval_s=0.3,
                management_url="", connect_retry_s=0.3)


def test_broker_unreachable_fires_while_rabbitmq_is_away_and_resolves_when_it_is_back(
        settings: Settings, names: Names, eventually: Callable[..., Any]) -> None:
    broker = urlparse(settings.amqp_url)
    relay = Relay((broker.hostname or "127.0.0.1", broker.port or 5672))
    relay.up()
    netloc = f"{broker.netloc.rpartition('@')[0]}@127.0.0.1:{relay.port}".lstrip("@")
    via_relay = settings.model_copy(update={"amqp_url": broker._replace(
        netloc=netloc, query="reconnect_interval=0.3").geturl()})
    engine = open_engine(settings.database_url)
    _alert_threshold(engine, 1.5)
    app = create_app(settings, {"TESTING": True})
    web = app.test_client()

    def firing() -> list[dict[str, Any]]:
        alerts = web.get("/api/alerts").get_json()["alerts"]
        return [a for a in alerts if a["rule"] == "broker_unreachable"]

    collector = Running(via_relay, QUICK)
    try:
        def consuming() -> bool:  # started up: topology declared, consumers on, sampled
            with Session(engine) as session:
                return (session.scalar(select(func.max(QueueSample.consumers)).where(
                    QueueSample.queue == names.dashboard_events)) or 0) >= 1

        eventually(consuming, timeout=15)
        assert _broker_state(engine) == "ok"
        relay.down()
        eventually(lambda: _broker_state(engine) == "firing", timeout=30)
        (alert,) = firing()
        assert "Broker unreachable" in alert["text"]
        page = web.get("/alerts").get_data(as_text=True)
        assert 'data-rule="broker_unreachable" data-state="firing"' in page
        relay.up()
        eventually(lambda: _broker_state(engine) == "ok", timeout=30)
        assert firing() == []
    finally:
        relay.up()  # the broker back before stopping: a clean close, whatever failed above
        collector.stop()
        relay.down()
        with app.app_context():
            db.engine.dispose()
        engine.dispose()


def test_a_collector_started_while_rabbitmq_is_down_still_raises_the_alert(
        settings: Settings, eventually: Callable[..., Any]) -> None:
    closed = settings.model_copy(update={
        "amqp_url": f"amqp://guest:guest@127.0.0.1:{free_port()}/"})
    engine = open_engine(settings.database_url)
    _alert_threshold(engine, 1.0)
    collector = Running(closed, QUICK)  # it keeps trying to connect, evaluating meanwhile
    try:
        eventually(lambda: _broker_state(engine) == "firing", timeout=15)
        with Session(engine) as session:
            assert session.scalar(select(func.count()).select_from(QueueSample)) == 0
    finally:
        collector.stop()
        engine.dispose()
