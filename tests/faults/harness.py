"""Run the real services against the suite's own broker and Redis, load them through both
doors while a fault happens, and account for every task afterwards."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pika
import pika.exceptions

from bench.stack import Pipeline, Stack, free_port, wait_until, write_config
from tests.faults.servers import OwnRabbit, OwnRedis

# Every printed figures line of the session, shown again in pytest's terminal summary.
FIGURES: list[str] = []

WORKERS = 2
CONCURRENCY = 8
PROVIDER_LATENCY_MS = 100
SUBMIT_RETRY_S = 90.0  # how long a client keeps retrying one submission through a fault
TERMINAL = ("succeeded", "failed")
KINDS = ("classify", "extract", "summarize", "classify")  # mostly cheap, some standard


@dataclass
class FaultPipeline:
    """A running stack in a namespace of its own on the suite's broker and Redis."""

    pipeline: Pipeline
    rabbit: OwnRabbit
    redis: OwnRedis
    ns: str

    @property
    def stack(self) -> Stack:
        return self.pipeline.stack

    @property
    def ingest(self) -> str:
        return self.pipeline.ingest

    def stats(self) -> dict[str, Any]:
        return self.pipeline.stats()

    def control(self, **changes: Any) -> None:
        self.pipeline.control(**changes)

    def kill(self, name: str) -> int:
        """kill -9 the process `name` (its whole process group); return its pid."""
        process = self.stack.processes[name]
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return process.pid

    def gunicorn_workers(self) -> list[int]:
        """Return the pids of the ingest's gunicorn worker processes."""
        master = self.stack.processes["ingest"].pid
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        return [int(pid) for pid in children]

    def queue_depth(self, queue: str) -> int:
        connection = pika.BlockingConnection(pika.URLParameters(self.rabbit.url))
        try:
            return int(connection.channel().queue_declare(queue, passive=True)
                       .method.message_count)
        finally:
            connection.close()

    def drain(self, queue: str) -> list[tuple[dict[str, Any], bytes]]:
        """Take every message of `queue`: (headers, body) each."""
        connection = pika.BlockingConnection(pika.URLParameters(self.rabbit.url))
        taken = []
        try:
            channel = connection.channel()
            while True:
                method, properties, body = channel.basic_get(queue, auto_ack=True)
                if method is None:
                    return taken
                taken.append((dict(properties.headers or {}), body))
        finally:
            connection.close()


@contextmanager
def fault_pipeline(tmp: Path, rabbit: OwnRabbit, redis_server: OwnRedis, *,
                   workers: int = WORKERS, concurrency: int = CONCURRENCY,
                   latency_ms: int = PROVIDER_LATENCY_MS, rpm: int = 0,
                   env: dict[str, str] | None = None) -> Iterator[FaultPipeline]:
    """Start mockllm, ingest (2 gunicorn workers), intake, router, recorder and the workers;
    stop them all afterwards and print their logs' tails (pytest shows them on failure)."""
    ns = f"faults_{uuid.uuid4().hex[:8]}"
    mock_port, ingest_port = free_port(), free_port()
    mock = f"http://127.0.0.1:{mock_port}"
    # With `rpm`, mockllm enforces and advertises it (x-ratelimit-*) and the table says so.
    config = write_config(tmp / "agentq.toml", f"{mock}/v1", rpm=rpm)
    stack = Stack({"AGENTQ_NAMESPACE": ns, "AGENTQ_DATABASE_URL": f"sqlite:///{tmp}/results.db",
                   "AGENTQ_CONFIG": str(config), "AGENTQ_INGEST_PORT": str(ingest_port),
                   "AGENTQ_AMQP_URL": rabbit.url, "AGENTQ_REDIS_URL": redis_server.url,
                   "AGENTQ_METRICS_PORT": "-1", "AGENTQ_MAX_ATTEMPTS": "5",
                   "AGENTQ_RETRY_BASE_MS": "100", "AGENTQ_RETRY_MAX_MS": "1000",
                   "AGENTQ_LLM_TIMEOUT_S": "20", **(env or {})}, tmp)
    pipeline = Pipeline(stack, ns, f"http://127.0.0.1:{ingest_port}", mock,
                        concurrency=concurrency, worker_args=("--grace", "5"))
    try:
        stack.start("mockllm", "mockllm", "--port", str(mock_port),
                    "--latency-ms", str(latency_ms), "--jitter-ms", str(latency_ms // 4),
                    "--rpm", str(rpm))
        for name in ("ingest", "intake", "router", "recorder"):
            stack.start(name, name)
        for i in range(1, workers + 1):
            pipeline.start_worker(i)
        wait_until(lambda: httpx.get(f"{mock}/healthz").status_code == 200, 30, "mockllm")
        wait_until(lambda: httpx.get(f"{pipeline.ingest}/healthz").status_code == 200, 60,
                   "ingest /healthz")
        yield FaultPipeline(pipeline, rabbit, redis_server, ns)
    finally:
        stack.stop_all()
        stack.print_logs(tail=3000)


def task_body(scenario: str, door: str, i: int, tenants: int = 3) -> dict[str, Any]:
    """A task with its own id and a prompt no other task has (no cache hit, no dedup)."""
    return {"id": f"{scenario}-{door}-{i}", "tenant": f"tenant{i % tenants}",
            "kind": KINDS[i % len(KINDS)],
            "prompt": f"{scenario} {door} task {i} {uuid.uuid4().hex}",
            "metadata": {"door": door, "n": i}}


@dataclass
class Load:
    """Submit tasks over HTTP (several threads) and AMQP (one publisher) at a steady pace,
    retrying each one as a careful client would (same id) until the door takes it."""

    run: FaultPipeline
    scenario: str
    n_http: int = 150
    n_amqp: int = 150
    seconds: float = 4.0  # how long the submissions are spread over
    http_threads: int = 4
    tenants: int = 3
    accepted: dict[str, str] = field(default_factory=dict)  # task id -> its tenant
    statuses: Counter[int] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)  # 5xx the contract does not allow
    connection_errors: int = 0
    amqp_reconnects: int = 0
    allow_503: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)
    _errors: list[BaseException] = field(default_factory=list)

    def start(self) -> Load:
        self._started = time.monotonic()
        http_tasks = [task_body(self.scenario, "h", i, self.tenants) for i in range(self.n_http)]
        for k in range(self.http_threads):
            share = http_tasks[k::self.http_threads]
            self._spawn(self._http_loop, share)
        self._spawn(self._amqp_loop, [task_body(self.scenario, "a", i, self.tenants)
                                      for i in range(self.n_amqp)])
        return self

    @property
    def total(self) -> int:
        return self.n_http + self.n_amqp

    def _spawn(self, target: Callable[[list[dict[str, Any]]], None],
               tasks: list[dict[str, Any]]) -> None:
        def guarded() -> None:
            try:
                target(tasks)
            except BaseException as exc:  # reported by join()
                self._errors.append(exc)

        thread = threading.Thread(target=guarded, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _pace(self, index: int, count: int) -> None:
        due = self._started + self.seconds * index / max(1, count)
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)

    def _http_loop(self, tasks: list[dict[str, Any]]) -> None:
        with httpx.Client(timeout=15) as client:
            for index, task in enumerate(tasks):
                self._pace(index, len(tasks))
                self._submit_http(client, task)

    def _submit_http(self, client: httpx.Client, task: dict[str, Any]) -> None:
        deadline = time.monotonic() + SUBMIT_RETRY_S
        while True:
            assert time.monotonic() < deadline, f"HTTP submit of {task['id']} never accepted"
            try:
                response = client.post(f"{self.run.ingest}/v1/tasks", json=task)
            except httpx.TransportError:  # a killed gunicorn worker resets its connections
                with self._lock:
                    self.connection_errors += 1
                time.sleep(0.1)
                continue
            with self._lock:
                self.statuses[response.status_code] += 1
            if response.status_code == 202:
                assert response.json()["id"] == task["id"]
                with self._lock:
                    self.accepted[task["id"]] = task["tenant"]
                return
            retry_after = response.headers.get("Retry-After")
            if response.status_code == 503 and retry_after and self.allow_503:
                time.sleep(min(float(retry_after), 0.5))
                continue
            with self._lock:
                self.violations.append(f"{response.status_code} {response.text[:300]}")
            if response.status_code < 500:
                raise AssertionError(f"{task['id']} refused: {response.status_code} "
                                     f"{response.text[:300]}")
            time.sleep(0.2)

    def _amqp_loop(self, tasks: list[dict[str, Any]]) -> None:
        params = pika.URLParameters(f"{self.run.rabbit.url}?heartbeat=0&socket_timeout=3"
                                    "&blocked_connection_timeout=10")
        connection: pika.BlockingConnection | None = None
        channel: Any = None
        properties = pika.BasicProperties(content_type="application/json", delivery_mode=2)
        try:
            for index, task in enumerate(tasks):
                self._pace(index, len(tasks))
                body = json.dumps(task).encode()
                deadline = time.monotonic() + SUBMIT_RETRY_S
                while True:
                    assert time.monotonic() < deadline, f"AMQP submit of {task['id']} failed"
                    try:
                        if connection is None or not connection.is_open:
                            connection = pika.BlockingConnection(params)
                            channel = connection.channel()
                            channel.confirm_delivery()
                        channel.basic_publish(f"{self.run.ns}.submit", "task", body,
                                              properties, mandatory=True)
                    except (pika.exceptions.AMQPError, OSError):
                        # Not confirmed: publish it again, same id (a resubmit is idempotent).
                        with self._lock:
                            self.amqp_reconnects += 1
                        _close_quietly(connection)
                        connection = None
                        time.sleep(0.2)
                        continue
                    with self._lock:
                        self.accepted[task["id"]] = task["tenant"]
                    break
        finally:
            _close_quietly(connection)

    def wait_accepted(self, share: float, timeout: float = 60) -> None:
        """Wait until `share` of the tasks were taken by a door (the fault goes in then)."""
        wait_until(lambda: len(self.accepted) >= share * self.total or self._errors, timeout,
                   f"{share:.0%} of the tasks accepted", interval=0.02)

    def join(self, timeout: float = SUBMIT_RETRY_S + 30) -> None:
        for thread in self._threads:
            thread.join(timeout)
            assert not thread.is_alive(), "a submitter is still running"
        if self._errors:
            raise self._errors[0]


def _close_quietly(connection: pika.BlockingConnection | None) -> None:
    if connection is not None and connection.is_open:
        try:
            connection.close()
        except Exception:  # already half-closed
            pass


@dataclass
class Outcome:
    """What became of a load's tasks once the pipeline went quiet."""

    scenario: str
    submitted: int
    bodies: dict[str, dict[str, Any]]  # task id -> GET /v1/tasks/<id> body
    stats: dict[str, Any]
    load: Load

    def count(self, status: str) -> int:
        return sum(1 for body in self.bodies.values() if body.get("status") == status)

    @property
    def stuck(self) -> list[str]:
        return [task_id for task_id, body in self.bodies.items()
                if body.get("status") not in TERMINAL]

    @property
    def paid(self) -> int:
        return int(self.stats["requests"])

    @property
    def duplicates(self) -> int:
        """Completed provider calls beyond one per succeeded task (no two tasks share a
        prompt, so each needs exactly one; an answer a killed worker cached before it could
        publish it serves the redelivered task, and counts once)."""
        return int(self.stats["completed"]) - self.count("succeeded")

    def line(self, **extra: Any) -> str:
        more = "".join(f" {key}={value}" for key, value in extra.items())
        return (f"scenario={self.scenario} submitted={self.submitted} "
                f"succeeded={self.count('succeeded')} failed={self.count('failed')} "
                f"stuck={len(self.stuck)} paid_calls={self.paid} "
                f"duplicates={self.duplicates}{more}")


def settle(run: FaultPipeline, load: Load, timeout: float = 90,
           quiet_s: float = 30) -> Outcome:
    """Wait for the submitters, then until every accepted task is finished, or nothing
    finished for `quiet_s` (stuck), or `timeout`; return the outcome."""
    load.join()
    ids = sorted(load.accepted)
    bodies: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    last_progress = time.monotonic()
    with httpx.Client(timeout=10) as client:
        while True:
            pending = [i for i in ids if bodies.get(i, {}).get("status") not in TERMINAL]
            for task_id in pending:
                try:  # ids are per tenant: say whose
                    response = client.get(f"{run.ingest}/v1/tasks/{task_id}",
                                          params={"tenant": load.accepted[task_id]})
                except httpx.TransportError:
                    continue
                if response.status_code >= 500 and not (
                        load.allow_503 and response.status_code == 503
                        and response.headers.get("Retry-After")):
                    load.violations.append(f"GET {task_id}: {response.status_code} "
                                           f"{response.text[:300]}")
                body = response.json() if response.status_code == 200 else {
                    "status": f"http {response.status_code}"}
                if body.get("status") in TERMINAL:
                    last_progress = time.monotonic()
                bodies[task_id] = body
            now = time.monotonic()
            if (all(bodies.get(i, {}).get("status") in TERMINAL for i in ids)
                    or now > deadline or now - last_progress > quiet_s):
                break
            time.sleep(0.3)
    # The provider's count, once calls cut off by the fault had their time to end.
    time.sleep(0.2)
    return Outcome(load.scenario, len(ids), bodies, run.stats(), load)


def report(outcome: Outcome, **extra: Any) -> str:
    line = outcome.line(**extra)
    FIGURES.append(line)
    print(line)
    return line


def check(outcome: Outcome, extra_calls: int, **extra: Any) -> None:
    """Print the figures line and assert the suite's promises: no task lost or stuck,
    provider calls within tasks + `extra_calls`, no 5xx the contract does not allow."""
    report(outcome, **extra)
    load = outcome.load
    stuck = outcome.stuck
    assert not stuck, (f"{len(stuck)} of {outcome.submitted} tasks never finished, e.g. "
                       + ", ".join(f"{i}: {outcome.bodies.get(i, {}).get('status')}"
                                   for i in stuck[:5]))
    assert outcome.submitted == load.total
    assert not load.violations, f"HTTP answers the contract does not allow: {load.violations[:5]}"
    assert outcome.paid <= outcome.submitted + extra_calls, (
        f"{outcome.paid} provider calls for {outcome.submitted} tasks "
        f"(at most {extra_calls} more allowed)")
