"""What a system under test offers the measurement, and the plumbing both systems share."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Protocol

import pika

from bench.limiter.estimate import EstimateError
from bench.limiter.workload import Spec
from bench.stack import AMQP_URL


@dataclass
class Record:
    """One finished call as the system reports it: when, whose, tokens served, success."""

    at: float
    tenant: str
    tokens: int
    ok: bool


class System(Protocol):
    name: str
    mock: str

    def publish(self, specs: list[Spec]) -> None: ...
    def collect(self) -> list[Record]: ...
    def limiter_snapshot(self) -> dict[str, float] | None: ...
    def events_p99(self) -> float | None: ...
    def estimate_error(self) -> EstimateError | None: ...
    def pids(self) -> dict[str, list[int]]: ...


def connect(exit_stack: contextlib.ExitStack) -> pika.BlockingConnection:
    """Open a broker connection that `exit_stack` closes."""
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))

    def close() -> None:
        with contextlib.suppress(Exception):
            connection.close()

    exit_stack.callback(close)
    return connection


def kill_groups(processes: list[subprocess.Popen[bytes]], grace_s: float) -> None:
    """SIGTERM every process group at once, then SIGKILL what is left after `grace_s`."""
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
