"""`agentq up`: start the whole stack as child processes, prefix their logs, stop cleanly."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

from services.common.config import AgentqConfig
from services.common.settings import DEFAULT_PORTS, WORKER_METRICS_BASE, Settings

# Workers finish the calls they hold on SIGTERM (the LLM timeout + 10 s at most).
STOP_GRACE_EXTRA_S = 15.0
RESTART_BACKOFF_S = 2.0
AUTOSCALE_MAX = 8


@dataclass
class ChildSpec:
    """One service process: its name, the `agentq` verb line, and extra environment."""

    name: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)


def local_mock_provider(config: AgentqConfig, mock_port: int) -> str | None:
    """Return the provider that points at the simulated provider on this host, if any."""
    for name, provider in config.providers.items():
        url = urlparse(provider.base_url)
        if url.hostname in ("127.0.0.1", "localhost") and url.port == mock_port:
            return name
    return None


def uses_mockllm(config: AgentqConfig, mock_port: int) -> bool:
    """Return whether `agentq up` starts the simulated provider for this table."""
    return local_mock_provider(config, mock_port) is not None


def mock_port(settings: Settings) -> int:
    """Return the port the simulated provider listens on: the one AGENTQ_MOCKLLM_URL names."""
    return urlparse(settings.mockllm_url).port or DEFAULT_PORTS["mockllm"]


def stack(settings: Settings, config: AgentqConfig, workers: int, autoscale: bool,
          mock_port: int = DEFAULT_PORTS["mockllm"]) -> list[ChildSpec]:
    """Return the processes of the local stack; compose runs these same verb lines."""
    children = []
    metrics_off = settings.metrics_port < 0  # AGENTQ_METRICS_PORT=-1: no child serves metrics
    if uses_mockllm(config, mock_port):
        children.append(ChildSpec("mockllm", ["mockllm", "--port", str(mock_port)]))
    children += [
        ChildSpec("ingest", ["ingest"]),
        ChildSpec("intake", ["intake"]),
        ChildSpec("router", ["router"]),
        ChildSpec("recorder", ["recorder"]),
        ChildSpec("dashboard", ["dashboard"]),
    ]
    if autoscale:
        # `--workers N` is then the most the autoscaler may run.
        children.append(ChildSpec("autoscale", ["autoscale", "--min", "1",
                                                "--max", str(max(1, workers))]))
    else:
        for i in range(1, workers + 1):
            # Each worker gets its own metrics port so all of them can be scraped.
            env = {} if metrics_off else {"AGENTQ_METRICS_PORT": str(WORKER_METRICS_BASE + i)}
            children.append(ChildSpec(f"worker-{i}", ["worker"], env))
    return children


class Child:
    """A running child process whose output is printed with its name in front."""

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self) -> None:
        env = {**os.environ, **self.spec.env, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.cli", *self.spec.args], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        threading.Thread(target=self._pump, args=(self.process,), daemon=True).start()

    def _pump(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        width = 11
        for line in process.stdout:
            sys.stdout.write(f"{self.spec.name:<{width}}| {line.decode(errors='replace')}")
            sys.stdout.flush()

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                pass


def supervise(children: list[Child], stop: threading.Event) -> None:
    """Keep the children running until `stop`; a child that dies is restarted."""
    for child in children:
        child.start()
    while not stop.wait(0.5):
        for child in children:
            if child.process is not None and child.process.poll() is not None:
                code = child.process.returncode
                child.restarts += 1
                delay = min(30.0, RESTART_BACKOFF_S * child.restarts)
                print(f"{child.spec.name} exited with {code}; restarting in {delay:.0f}s",
                      flush=True)
                if stop.wait(delay):
                    break
                child.start()


def shutdown(children: list[Child], grace_s: float) -> None:
    """SIGTERM every child, wait for them to drain, then kill what is left."""
    for child in children:
        child.signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for child in children:
        if child.process is None:
            continue
        try:
            child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.signal(signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentq up", description="start the whole stack")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default 2); with --autoscale, the most it may "
                             f"run (default {AUTOSCALE_MAX})")
    parser.add_argument("--autoscale", action="store_true",
                        help="scale workers on queue depth instead of running a fixed number")
    parser.add_argument("--config", default=None, help="tier table (agentq.toml)")
    args = parser.parse_args(argv)
    if args.config:
        os.environ["AGENTQ_CONFIG"] = args.config
    from services.cli import config_report, one_line
    from services.cli import main as cli

    try:
        settings = Settings()
    except ValueError as exc:
        print(f"agentq up: bad setting: {one_line(exc)}", file=sys.stderr)
        return 1
    # The table and the environment first, one line per problem, not a traceback later; the
    # simulated provider is not probed when it is this command that is about to start it.
    report = config_report(settings, probe=False)
    if report.config is not None:  # the table loads: probe too, to say everything at once
        mock = local_mock_provider(report.config, mock_port(settings))
        report = config_report(settings, skip_probe=(mock,) if mock else ())
    if report.problems:
        for problem in report.problems:
            print(problem.line(), file=sys.stderr)
        print("agentq up: not started (`agentq config check` checks again)", file=sys.stderr)
        return 1
    assert report.config is not None
    config = report.config

    if cli(["topology"]) != 0:
        return 1
    workers = args.workers or (AUTOSCALE_MAX if args.autoscale else 2)
    children = [Child(spec) for spec in stack(settings, config, workers, args.autoscale,
                                              mock_port(settings))]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"agentq up: ingest http://127.0.0.1:{settings.ingest_port}  dashboard "
          f"http://127.0.0.1:{settings.dashboard_port}  (Ctrl-C stops)", flush=True)
    try:
        supervise(children, stop)
    finally:
        print("agentq up: stopping", flush=True)
        shutdown(children, settings.llm_timeout_s + STOP_GRACE_EXTRA_S)
    return 0
