"""Start agentq services as real processes for end-to-end tests, and stop them cleanly."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
REDIS_URL = "redis://127.0.0.1:6379/0"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.1) -> Any:
    """Poll `predicate` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the service may not be up yet
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}"
                         + (f" (last error: {last_error!r})" if last_error else ""))


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
         raw: bytes | None = None, timeout: float = 10) -> tuple[int, Any]:
    """Make one HTTP request and return (status, parsed JSON body or None)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json",
                                              **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        payload, status = exc.read(), exc.code
    try:
        return status, json.loads(payload) if payload else None
    except ValueError:
        return status, payload


class Stack:
    """A set of agentq processes sharing one environment (namespace, database, ports)."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.log_dir = log_dir
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> None:
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "services.cli", *args], cwd=ROOT,
            env={**self.env, **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def alive(self, name: str) -> bool:
        return self.processes[name].poll() is None

    def stop(self, name: str, timeout: float = 40) -> int | None:
        process = self.processes.pop(name)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        return process.returncode

    def stop_all(self) -> None:
        for name in list(self.processes):
            self.stop(name)


class ScratchDatabase:
    """A results database for one test run: a SQLite file, or a PostgreSQL schema of its own.

    PostgreSQL is used when AGENTQ_TEST_DATABASE_URL is set (e.g.
    postgresql://root@127.0.0.1/test); the schema is dropped at the end.
    """

    def __init__(self, namespace: str, directory: Path) -> None:
        base = os.environ.get("AGENTQ_TEST_DATABASE_URL", "")
        self.schema = namespace if base else None
        if base:
            sep = "&" if "?" in base else "?"
            self.url = f"{base}{sep}options=-csearch_path%3D{namespace}"
            self._admin(f'CREATE SCHEMA IF NOT EXISTS "{namespace}"')
        else:
            self.url = f"sqlite:///{directory / 'results.db'}"

    def _admin(self, statement: str) -> None:
        from sqlalchemy import create_engine, text

        from services.common.store import engine_url

        engine = create_engine(engine_url(os.environ["AGENTQ_TEST_DATABASE_URL"]))
        with engine.begin() as conn:
            conn.execute(text(statement))
        engine.dispose()

    def drop(self) -> None:
        if self.schema:
            self._admin(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')


def delete_namespace(amqp_url: str, redis_url: str, namespace: str) -> None:
    """Remove every queue, exchange and Redis key of a test namespace."""
    import asyncio

    import aio_pika
    import redis

    from services.common.topology import Names, delete_topology

    async def drop_topology() -> None:
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            await delete_topology(await connection.channel(), Names(namespace))

    asyncio.run(drop_topology())
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def write_config(path: Path, mock_url: str, rpm: int = 0, tpm: int = 0) -> Path:
    """Write a tier table whose one provider is the simulated one at `mock_url`."""
    models = {"cheap": ("gpt-4o-mini", 0.15, 0.60), "standard": ("gpt-4o", 2.50, 10.00),
              "premium": ("o1", 15.00, 60.00)}
    tiers = "".join(
        f'[tiers.{tier}]\nmodels = [{{ provider = "mock", model = "{model}", '
        f"input_per_mtok = {price_in}, output_per_mtok = {price_out} }}]\n"
        for tier, (model, price_in, price_out) in models.items())
    path.write_text(
        f'[providers.mock]\nbase_url = "{mock_url}"\nrpm = {rpm}\ntpm = {tpm}\n\n{tiers}\n'
        '[routing.kinds]\nclassify = "cheap"\nextract = "cheap"\nsummarize = "standard"\n'
        'reason = "premium"\n')
    return path


class Pipeline:
    """Handles on a running stack: its URLs, namespace and simulated provider."""

    def __init__(self, stack: Stack, ns: str, ingest: str, mock: str) -> None:
        self.stack, self.ns, self.ingest, self.mock = stack, ns, ingest, mock

    def submit(self, task: Any) -> str:
        status, body = http("POST", f"{self.ingest}/v1/tasks", task)
        assert status == 202, body
        return str(body["id"])

    def task(self, task_id: str) -> dict[str, Any]:
        status, body = http("GET", f"{self.ingest}/v1/tasks/{task_id}")
        assert status == 200, body
        return dict(body)

    def wait_done(self, ids: list[str], timeout: float = 90) -> dict[str, dict[str, Any]]:
        """Poll until every task finished; return their bodies by id."""
        done: dict[str, dict[str, Any]] = {}

        def all_done() -> bool:
            for task_id in ids:
                if task_id not in done:
                    body = self.task(task_id)
                    if body["status"] in ("succeeded", "failed"):
                        done[task_id] = body
            return len(done) == len(ids)

        wait_until(all_done, timeout, f"{len(ids)} tasks to finish", interval=0.2)
        return done

    def stats(self) -> dict[str, int]:
        return dict(http("GET", f"{self.mock}/stats")[1])

    def control(self, **changes: Any) -> None:
        status, body = http("POST", f"{self.mock}/control", changes)
        assert status == 200, body


@contextmanager
def running_pipeline(tmp: Path, workers: int = 2, concurrency: int = 16,
                     env: dict[str, str] | None = None, mock_args: tuple[str, ...] = (),
                     rpm: int = 0, tpm: int = 0) -> Iterator[Pipeline]:
    """Run mockllm, ingest, intake, router, recorder and workers in a namespace of their own."""
    ns = f"agentq_test_{uuid.uuid4().hex[:8]}"
    database = ScratchDatabase(ns, tmp)
    mock_port, ingest_port = free_port(), free_port()
    mock = f"http://127.0.0.1:{mock_port}"
    config = write_config(tmp / "agentq.toml", f"{mock}/v1", rpm=rpm, tpm=tpm)
    stack = Stack({"AGENTQ_NAMESPACE": ns, "AGENTQ_DATABASE_URL": database.url,
                   "AGENTQ_CONFIG": str(config), "AGENTQ_INGEST_PORT": str(ingest_port),
                   "AGENTQ_AMQP_URL": AMQP_URL, "AGENTQ_REDIS_URL": REDIS_URL,
                   "AGENTQ_METRICS_PORT": "-1", **(env or {})}, tmp)
    try:
        stack.start("mockllm", "mockllm", "--port", str(mock_port), *mock_args)
        for name in ("ingest", "intake", "router", "recorder"):
            stack.start(name, name)
        for i in range(1, workers + 1):
            stack.start(f"worker-{i}", "worker", "--concurrency", str(concurrency))
        wait_until(lambda: http("GET", f"{mock}/healthz")[0] == 200, 30, "mockllm")
        ingest = f"http://127.0.0.1:{ingest_port}"
        wait_until(lambda: http("GET", f"{ingest}/healthz")[0] == 200, 60, "ingest /healthz")
        yield Pipeline(stack, ns, ingest, mock)
    finally:
        stack.stop_all()
        delete_namespace(AMQP_URL, REDIS_URL, ns)
        database.drop()
