"""The shipped install, as a user gets it: `pip install .` into an empty virtualenv, no extras
(what the README and deploy/Dockerfile do), then `agentq up` from that venv.

The dev venv has the test extras, which once hid a worker that crashed on import in every
plain install; nothing here runs on the dev venv's packages except the test's own clients.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

from bench.stack import AMQP_URL, REDIS_URL, ROOT, delete_namespace, free_port, http, wait_until

# Modules that need an optional extra, and the extra whose absence they may report.
NEEDS_EXTRA = {"bench.limiter.celery_peer": "celery", "bench.celery_peer": "celery"}

# What a copy of the source tree leaves out: the dev venv and everything built or written.
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv*", "*.egg-info", "build", "dist",
                                    "__pycache__", "artifacts", "*.db", ".pytest_cache")


def _run(venv: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / args[0]), *args[1:]], capture_output=True,
                          text=True, timeout=timeout, env=_plain_env())


def _plain_env(**extra: str) -> dict[str, str]:
    """The environment without the dev venv: nothing of it may leak into the shipped one."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH") and not k.startswith("AGENTQ_")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not p.startswith(sys.prefix))
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return {**env, **extra}


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with `pip install .` of a copy of this tree (no extras)."""
    base = tmp_path_factory.mktemp("shipped")
    source = base / "src"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    installed = _run(venv, "python", "-m", "pip", "install", "-q", str(source))
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return venv


def test_plain_install_has_consistent_dependencies(shipped: Path) -> None:
    checked = _run(shipped, "python", "-m", "pip", "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    listed = _run(shipped, "python", "-m", "pip", "list", "--format=json")
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert "agentq" in names
    # The test extra is not there, so nothing below can be leaning on it.
    assert not names & {"pytest", "httpx", "playwright", "celery"}, names


def test_every_shipped_module_imports_from_the_plain_install(shipped: Path) -> None:
    script = (
        "import importlib, json, pkgutil, services, bench\n"
        "bad = {}\n"
        "for pkg in (services, bench):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        if m.name.endswith('.__main__'):\n"
        "            continue  # runs the command on import, by design\n"
        "        try:\n"
        "            importlib.import_module(m.name)\n"
        "        except BaseException as exc:\n"
        "            bad[m.name] = f'{type(exc).__name__}: {exc}'\n"
        "print(json.dumps(bad))\n")
    ran = subprocess.run([str(shipped / "bin" / "python"), "-c", script], capture_output=True,
                         text=True, timeout=300, env=_plain_env(), cwd=shipped)
    assert ran.returncode == 0, ran.stderr
    failures = json.loads(ran.stdout)
    unexpected = {name: error for name, error in failures.items()
                  if not (name in NEEDS_EXTRA and NEEDS_EXTRA[name] in error)}
    assert not unexpected, unexpected


class PlainStack:
    """`agentq up` from the shipped venv on free ports and its own namespace."""

    def __init__(self, venv: Path, directory: Path) -> None:
        self.ns = f"agentq_shipped_{uuid.uuid4().hex[:8]}"
        ports = {name: free_port() for name in ("ingest", "dashboard", "mock")}
        self.ingest = f"http://127.0.0.1:{ports['ingest']}"
        self.dashboard = f"http://127.0.0.1:{ports['dashboard']}"
        self.log = directory / "up.log"
        env = _plain_env(
            AGENTQ_NAMESPACE=self.ns, AGENTQ_AMQP_URL=AMQP_URL, AGENTQ_REDIS_URL=REDIS_URL,
            AGENTQ_DATABASE_URL=f"sqlite:///{directory / 'results.db'}",
            AGENTQ_INGEST_PORT=str(ports["ingest"]),
            AGENTQ_DASHBOARD_PORT=str(ports["dashboard"]),
            AGENTQ_MOCKLLM_URL=f"http://127.0.0.1:{ports['mock']}/v1",
            AGENTQ_METRICS_PORT="-1", AGENTQ_LLM_TIMEOUT_S="20")
        with self.log.open("wb") as log:
            # cwd is an empty directory, so no agentq.toml of the repository is picked up.
            self.process = subprocess.Popen(
                [str(venv / "bin" / "agentq"), "up", "--workers", "2"], cwd=directory,
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM `agentq up` as Ctrl-C would; return its exit code (None if it hung)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
                return None
        return self.process.returncode


@pytest.fixture
def plain_stack(shipped: Path, tmp_path: Path) -> Iterator[PlainStack]:
    stack = PlainStack(shipped, tmp_path)
    try:
        try:
            wait_until(lambda: http("GET", stack.ingest + "/healthz")[0] == 200, 60,
                       "ingest healthy")
        except AssertionError:
            print(stack.output()[-6000:])
            raise
        yield stack
    finally:
        stack.stop()
        delete_namespace(AMQP_URL, REDIS_URL, stack.ns)


def _publish(ns: str, task: dict[str, object]) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(f"{ns}.submit", "task", json.dumps(task).encode(),
                              pika.BasicProperties(content_type="application/json",
                                                   delivery_mode=2), mandatory=True)
    finally:
        connection.close()


def test_agentq_up_from_the_plain_install_serves_http_amqp_and_the_dashboard(
        plain_stack: PlainStack) -> None:
    ingest, ns = plain_stack.ingest, plain_stack.ns
    status, body = http("POST", ingest + "/v1/tasks",
                        {"kind": "summarize", "prompt": "Summarise: the shipped install works."})
    assert status == 202, body
    over_amqp = str(uuid.uuid4())
    _publish(ns, {"id": over_amqp, "kind": "classify",
                  "prompt": "Classify: the parcel never arrived. labels: complaint, praise"})
    results: dict[str, dict[str, object]] = {}

    def finished() -> bool:
        for task_id in (body["id"], over_amqp):
            code, task = http("GET", f"{ingest}/v1/tasks/{task_id}")
            if code == 200 and task["status"] in ("succeeded", "failed"):
                results[task_id] = task["result"]
        return len(results) == 2

    try:
        wait_until(finished, 90, "both tasks finished")
    except AssertionError:
        print(plain_stack.output()[-6000:])
        raise
    for result in results.values():
        assert result["status"] == "succeeded", result
        assert float(result["cost_usd"]) > 0, result  # type: ignore[arg-type]
        assert result["usage"]["prompt_tokens"] > 0, result  # type: ignore[index]

    status, page = http("GET", plain_stack.dashboard + "/")
    assert status == 200
    assert b"agentq" in page.lower()

    # Ctrl-C: every child drains and exits, none is killed, nothing crashed on the way.
    assert plain_stack.stop() == 0, plain_stack.output()[-4000:]
    output = plain_stack.output()
    assert "agentq up: stopping" in output
    assert "Traceback" not in output, output[-4000:]
    assert "exited with" not in output, output[-4000:]  # no child died and was restarted
