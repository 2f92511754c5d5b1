"""`agentq up`: start the whole stack as child processes (common/supervisor.py runs them)."""

from __future__ import annotations

import argparse
import os
import sys
import threading
from dataclasses import dataclass, field
from urllib.parse import urlparse

from services.common.config import AgentqConfig
from services.common.settings import DEFAULT_PORTS, WORKER_METRICS_BASE, Settings
from services.common.supervisor import Child, Program, shutdown, stop_on_signals, supervise

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
        ChildSpec("batcher", ["batcher"]),
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


def program(spec: ChildSpec) -> Program:
    """Return how the supervisor runs one service: `python -m services.cli <verb ...>`."""
    return Program(spec.name, [sys.executable, "-m", "services.cli", *spec.args], spec.env,
                   restart_s=RESTART_BACKOFF_S)


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
    children = [Child(program(spec)) for spec in stack(settings, config, workers,
                                                       args.autoscale, mock_port(settings))]
    stop = threading.Event()
    stop_on_signals(stop)
    print(f"agentq up: ingest http://127.0.0.1:{settings.ingest_port}  dashboard "
          f"http://127.0.0.1:{settings.dashboard_port}  (Ctrl-C stops)", flush=True)
    try:
        return supervise(children, stop)
    finally:
        print("agentq up: stopping", flush=True)
        shutdown(children, settings.llm_timeout_s + STOP_GRACE_EXTRA_S)
