"""Start agentq services as real processes (for the end-to-end tests and the benchmarks), and
stop them cleanly."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# The broker and cache every harness uses; AGENTQ_AMQP_URL / AGENTQ_REDIS_URL override them.
AMQP_URL = os.environ.get("AGENTQ_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
REDIS_URL = os.environ.get("AGENTQ_REDIS_URL", "redis://127.0.0.1:6379/0")
# Model prices (input, output per million tokens) and the default model of each tier.
PRICES = {"gpt-4o-mini": (0.15, 0.60), "claude-3-5-haiku": (0.80, 4.00), "gpt-4o": (2.50, 10.00),
          "claude-sonnet-4": (3.00, 15.00), "o1": (15.00, 60.00)}
TIER_MODELS = {"cheap": ["gpt-4o-mini"], "standard": ["gpt-4o"], "premium": ["o1"]}
# What running_pipeline starts besides mockllm, the workers and (optionally) the dashboard.
PIPELINE_SERVICES = ("ingest", "intake", "router", "recorder")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(port: int) -> subprocess.Popen[bytes]:
    """Start a Redis of the test's own on `port` (nothing kept on disk); return once it answers.

    For outage tests: kill it, and start another on the same port to bring Redis back.
    """
    import redis

    server = shutil.which("redis-server")
    assert server, "redis-server must be on PATH"
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--daemonize", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            if redis.Redis(port=port, socket_connect_timeout=0.2).ping():
                return proc
        except redis.ConnectionError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.02)


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

    def print_logs(self, *names: str, tail: int = 1500) -> None:
        """Print the last `tail` characters of the logs of `names` (default: every process
        that ran); pytest shows them when the test failed."""
        logs = ([self.log_dir / f"{name}.log" for name in names] if names
                else sorted(self.log_dir.glob("*.log")))
        for log in logs:
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-tail:]}")


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


def delete_namespace(amqp_url: str, redis_url: str, namespace: str,
                     lanes: Iterable[tuple[str, str]] = ()) -> None:
    """Remove every queue (tenant lanes too), exchange and Redis key of a test namespace.

    The lanes are those registered in Redis (read before its keys go), those the broker's
    lane roster names, and `lanes` ((tier, tenant) pairs a caller declared itself).
    """
    extra = set(lanes)
    import asyncio

    import aio_pika
    from redis.asyncio import Redis as AsyncRedis

    from services.common.models import TIERS
    from services.common.topology import Names, delete_topology
    from services.lanes.registry import registered_lanes
    from services.lanes.roster import roster_lanes

    names = Names(namespace)

    async def drop_topology() -> None:
        registry = AsyncRedis.from_url(redis_url)
        try:
            registered = await registered_lanes(registry, names, TIERS)
        finally:
            await registry.aclose()
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            every = sorted({*registered, *extra, *await roster_lanes(connection, names)})
            await delete_topology(await connection.channel(), names, lanes=every)

    asyncio.run(drop_topology())
    delete_redis_keys(redis_url, namespace)


def delete_redis_keys(redis_url: str, namespace: str) -> None:
    """Delete every Redis key of a namespace."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def write_config(path: Path, mock_url: str, rpm: int = 0, tpm: int = 0,
                 tiers: dict[str, list[str]] | None = None, extra: str = "") -> Path:
    """Write a tier table whose one provider is the simulated one at `mock_url`.

    `tiers` lists each tier's models (names from PRICES; default TIER_MODELS); `extra` is
    TOML appended at the end (budgets, tenants, cache settings...).
    """
    table = "".join(
        f"[tiers.{tier}]\nmodels = [" + ", ".join(
            f'{{ provider = "mock", model = "{model}", input_per_mtok = {PRICES[model][0]}, '
            f"output_per_mtok = {PRICES[model][1]} }}" for model in models) + "]\n"
        for tier, models in (tiers or TIER_MODELS).items())
    path.write_text(
        f'[providers.mock]\nbase_url = "{mock_url}"\nrpm = {rpm}\ntpm = {tpm}\n\n{table}\n'
        '[routing.kinds]\nclassify = "cheap"\nextract = "cheap"\nsummarize = "standard"\n'
        f'reason = "premium"\n{extra}')
    return path


@contextmanager
def scratch_namespace(tmp: Path, prefix: str = "agentq_test",
                      database_url: str | None = None) -> Iterator[tuple[str, str]]:
    """Yield a fresh namespace and its results-database URL (a ScratchDatabase unless
    `database_url` is given); delete its queues, keys and database schema afterwards."""
    ns = f"{prefix}_{uuid.uuid4().hex[:8]}"
    database = ScratchDatabase(ns, tmp) if database_url is None else None
    try:
        yield ns, database.url if database is not None else str(database_url)
    finally:
        delete_namespace(AMQP_URL, REDIS_URL, ns)
        if database is not None:
            database.drop()


class Pipeline:
    """Handles on a running stack: its URLs, namespace and simulated provider.

    `dashboard` is the dashboard's URL ("" when it was not started); `start_worker` starts
    one more worker like the first ones.
    """

    def __init__(self, stack: Stack, ns: str, ingest: str, mock: str, *,
                 concurrency: int = 16, worker_args: tuple[str, ...] = (),
                 dashboard: str = "") -> None:
        self.stack, self.ns, self.ingest, self.mock = stack, ns, ingest, mock
        self.concurrency, self.worker_args, self.dashboard = concurrency, worker_args, dashboard

    def start_worker(self, i: int | str, *args: str) -> None:
        """Start process `worker-{i}`: --concurrency, the pipeline's worker_args, then `args`."""
        self.stack.start(f"worker-{i}", "worker", "--concurrency", str(self.concurrency),
                         *self.worker_args, *args)

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

    def stats(self) -> dict[str, Any]:
        status, body = http("GET", f"{self.mock}/stats")
        assert status == 200, body
        return dict(body)

    def control(self, **changes: Any) -> None:
        status, body = http("POST", f"{self.mock}/control", changes)
        assert status == 200, body


@contextmanager
def running_pipeline(tmp: Path, workers: int = 2, concurrency: int = 16,
                     env: dict[str, str] | None = None, mock_args: tuple[str, ...] = (),
                     rpm: int = 0, tpm: int = 0, *, worker_args: tuple[str, ...] = (),
                     services: tuple[str, ...] = PIPELINE_SERVICES, dashboard: bool = False,
                     dashboard_args: tuple[str, ...] = (),
                     tiers: dict[str, list[str]] | None = None, extra_config: str = "",
                     database_url: str | None = None, prefix: str = "agentq_test",
                     print_logs: bool = False, provider: str | None = None
                     ) -> Iterator[Pipeline]:
    """Run mockllm, `services`, `workers` workers and, with `dashboard`, the dashboard in a
    namespace of their own; stop them and delete the namespace afterwards.

    Workers are worker-1..N, each `worker --concurrency C *worker_args`. `tiers`/
    `extra_config` shape the tier table (see write_config); `database_url` replaces the
    scratch database; `print_logs` prints every log's tail once the processes stopped.
    `provider` (a base URL without `/v1`) points the tier table at a provider already
    running instead of starting mockllm.
    """
    with scratch_namespace(tmp, prefix, database_url) as (ns, db_url):
        mock_port, ingest_port = free_port(), free_port()
        mock = provider or f"http://127.0.0.1:{mock_port}"
        config = write_config(tmp / "agentq.toml", f"{mock}/v1", rpm=rpm, tpm=tpm,
                              tiers=tiers, extra=extra_config)
        stack = Stack({"AGENTQ_NAMESPACE": ns, "AGENTQ_DATABASE_URL": db_url,
                       "AGENTQ_CONFIG": str(config), "AGENTQ_INGEST_PORT": str(ingest_port),
                       "AGENTQ_AMQP_URL": AMQP_URL, "AGENTQ_REDIS_URL": REDIS_URL,
                       "AGENTQ_METRICS_PORT": "-1", **(env or {})}, tmp)
        dash_port = free_port() if dashboard else 0
        pipeline = Pipeline(stack, ns, f"http://127.0.0.1:{ingest_port}", mock,
                            concurrency=concurrency, worker_args=worker_args,
                            dashboard=f"http://127.0.0.1:{dash_port}" if dashboard else "")
        try:
            if provider is None:
                stack.start("mockllm", "mockllm", "--port", str(mock_port), *mock_args)
            for name in services:
                stack.start(name, name)
            for i in range(1, workers + 1):
                pipeline.start_worker(i)
            if dashboard:
                stack.start("dashboard", "dashboard", "--port", str(dash_port), *dashboard_args)
            if provider is None:
                wait_until(lambda: http("GET", f"{mock}/healthz")[0] == 200, 30, "mockllm")
            if "ingest" in services:
                wait_until(lambda: http("GET", f"{pipeline.ingest}/healthz")[0] == 200, 60,
                           "ingest /healthz")
            if dashboard:
                wait_until(lambda: http("GET", f"{pipeline.dashboard}/api/thresholds")[0] == 200,
                           60, "the dashboard")
            yield pipeline
        finally:
            stack.stop_all()
            if print_logs:
                stack.print_logs()
