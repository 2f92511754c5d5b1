"""Run docker-compose.yml for real with podman-compose, and check what a user would.

Up in waves (podman-compose 1.6 on podman 4.3 ignores `condition: service_healthy` and runs
no healthchecks by itself), every container healthy, a task through the published ingest port
comes back costed, the dashboard answers; then an ordered stop (workers, apps, infrastructure)
with no container SIGKILLed, `down` keeping the named volumes, up again, and the first task's
result is still in the results store. Prints how long each part took.

Run by tests/containers/run, after the images exist: PODMAN_COMPOSE names podman-compose.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
FILES = ["-f", str(ROOT / "docker-compose.yml"),
         "-f", str(ROOT / "tests" / "containers" / "compose.override.yml")]
INFRA = ["rabbitmq", "redis", "postgres"]
WORKERS = ["worker"]
# Every other service of the compose file is an app, so a service added there (the batcher)
# is started, waited for and stopped here too, never left out of the check.
APPS = [name for name in yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
        if name not in (*INFRA, *WORKERS)]
HEALTHY_WITHIN_S = 240
SIGKILLED = 137


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Compose:
    """podman-compose on one project, with the test's ports in its environment."""

    def __init__(self, project: str, env: dict[str, str]) -> None:
        self.project = project
        self.env = {**os.environ, **env}
        self.binary = os.environ.get("PODMAN_COMPOSE", "podman-compose")

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([self.binary, "-p", self.project, *FILES, *args], cwd=ROOT,
                                env=self.env, capture_output=True, text=True, timeout=900)
        if check and result.returncode != 0:
            raise RuntimeError(f"podman-compose {' '.join(args)} failed:\n"
                               f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def containers(self, services: list[str] | None = None) -> list[dict[str, Any]]:
        listed = subprocess.run(
            ["podman", "ps", "-a", "--format", "json",
             "--filter", f"label=io.podman.compose.project={self.project}"],
            capture_output=True, text=True, check=True)
        found = json.loads(listed.stdout or "[]")
        return [c for c in found if services is None
                or c["Labels"].get("io.podman.compose.service") in services]

    def up(self, services: list[str]) -> None:
        self.run("up", "-d", "--no-deps", *services)
        self.wait_healthy(services)

    def wait_healthy(self, services: list[str]) -> None:
        deadline = time.monotonic() + HEALTHY_WITHIN_S
        pending = {c["Names"][0] for c in self.containers(services)}
        if not pending:
            raise RuntimeError(f"no containers for {services}")
        while pending:
            for name in sorted(pending):
                probe = subprocess.run(["podman", "healthcheck", "run", name],
                                       capture_output=True, text=True)
                if probe.returncode == 0:
                    pending.discard(name)
            if pending and time.monotonic() > deadline:
                logs = {n: subprocess.run(["podman", "logs", "--tail", "40", n],
                                          capture_output=True, text=True).stderr[-2000:]
                        for n in pending}
                raise RuntimeError(f"not healthy after {HEALTHY_WITHIN_S}s: {logs}")
            if pending:
                time.sleep(2)

    def stop_in_order(self) -> dict[str, int]:
        """Stop workers, then the apps, then the infrastructure; return each exit code."""
        for wave in (WORKERS, APPS, INFRA):
            self.run("stop", *wave)
        return {c["Names"][0]: int(c["ExitCode"]) for c in self.containers()}


def http(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            payload, status = response.read(), response.status
    except urllib.error.HTTPError as exc:
        payload, status = exc.read(), exc.code
    try:
        return status, json.loads(payload)
    except ValueError:
        return status, payload


def finished_task(ingest: str, task_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status, task = http("GET", f"{ingest}/v1/tasks/{task_id}")
        except OSError:
            status, task = 0, None
        if status == 200 and task["status"] in ("succeeded", "failed"):
            return dict(task)
        time.sleep(1)
    raise RuntimeError(f"task {task_id} not finished after {timeout:.0f}s")


def submit_costed_task(ingest: str, label: str) -> str:
    status, body = http("POST", f"{ingest}/v1/tasks",
                        {"kind": "summarize", "prompt": f"Summarise: {label} {uuid.uuid4()}"})
    if status != 202:
        raise RuntimeError(f"POST /v1/tasks answered {status}: {body}")
    task = finished_task(ingest, body["id"])
    result = task["result"]
    if result["status"] != "succeeded" or not result["cost_usd"] > 0:
        raise RuntimeError(f"task not costed: {result}")
    print(f"  task {body['id']}: {result['status']}, {result['model']}, "
          f"${result['cost_usd']:.6f}, {result['latency_ms']['total']} ms")
    return str(body["id"])


def check_no_sigkill(codes: dict[str, int]) -> None:
    killed = sorted(name for name, code in codes.items() if code == SIGKILLED)
    print(f"  exit codes: {json.dumps(codes, sort_keys=True)}")
    if killed:
        raise RuntimeError(f"SIGKILLed on stop (stop_grace_period too short?): {killed}")


def main() -> int:
    project = f"agentqct{uuid.uuid4().hex[:6]}"
    ports = {"AGENTQ_INGEST_HOST_PORT": free_port(), "AGENTQ_DASHBOARD_HOST_PORT": free_port(),
             "RABBITMQ_MANAGEMENT_HOST_PORT": free_port()}
    compose = Compose(project, {"AGENTQ_PUBLISH_ADDRESS": "127.0.0.1",
                                **{k: str(v) for k, v in ports.items()}})
    ingest = f"http://127.0.0.1:{ports['AGENTQ_INGEST_HOST_PORT']}"
    dashboard = f"http://127.0.0.1:{ports['AGENTQ_DASHBOARD_HOST_PORT']}"
    timings: list[tuple[str, float]] = []

    def timed(name: str, started: float) -> None:
        timings.append((name, time.monotonic() - started))

    try:
        started = time.monotonic()
        for wave in (INFRA, APPS, WORKERS):
            compose.up(wave)
        timed("up to all healthy", started)
        print(f"  {len(compose.containers())} containers healthy")

        started = time.monotonic()
        first = submit_costed_task(ingest, "through the compose stack")
        status, page = http("GET", f"{dashboard}/")
        if status != 200 or b"agentq" not in page.lower():
            raise RuntimeError(f"dashboard answered {status}")
        timed("task costed, dashboard answers", started)

        started = time.monotonic()
        check_no_sigkill(compose.stop_in_order())
        timed("ordered stop", started)

        # `down` without -v removes the containers and keeps the named volumes.
        compose.run("down")
        started = time.monotonic()
        for wave in (INFRA, APPS, WORKERS):
            compose.up(wave)
        timed("up again to all healthy", started)
        kept = finished_task(ingest, first, timeout=30)
        if kept["result"]["status"] != "succeeded":
            raise RuntimeError(f"results store lost the first task: {kept}")
        print(f"  task {first} still stored after down and up")
        submit_costed_task(ingest, "after a restart")

        started = time.monotonic()
        check_no_sigkill(compose.stop_in_order())
        timed("ordered stop again", started)
    except Exception as exc:
        print(f"container test FAILED: {exc}", file=sys.stderr)
        for container in compose.containers():
            name = container["Names"][0]
            tail = subprocess.run(["podman", "logs", "--tail", "25", name],
                                  capture_output=True, text=True)
            print(f"--- {name} ({container['State']})\n{tail.stdout}{tail.stderr}",
                  file=sys.stderr)
        return 1
    finally:
        compose.run("down", "-v", "-t", "5", check=False)
        for name, seconds in timings:
            print(f"  {name:<34} {seconds:6.1f}s")
    print("container test passed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
