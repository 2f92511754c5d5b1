"""One process supervisor: start children, restart those that die, stop them all cleanly.

`agentq up` (every service, logs prefixed with its name) and `agentq dashboard` (gunicorn and
the collector) run their children through it. A child is restarted after a growing pause
unless it is essential: an essential child's exit (gunicorn's) stops everything.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

MAX_RESTART_S = 30.0
POLL_S = 0.5
PREFIX_WIDTH = 11


def _print(line: str) -> None:
    print(line, flush=True)


@dataclass(frozen=True)
class Program:
    """What to run: a name, its command line, extra environment, and how it is supervised."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    restart_s: float = 2.0  # the first restart's pause; the n-th waits n times as long
    essential: bool = False  # its exit stops the others (and sets the exit code)
    prefix: bool = True  # print its output with its name in front (else it shares ours)


class Child:
    """A running child process (its own process group, so a signal reaches all of it)."""

    def __init__(self, program: Program) -> None:
        self.program = program
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.restart_at: float | None = None  # when an exited child is started again

    def start(self) -> None:
        env = {**os.environ, **self.program.env, "PYTHONUNBUFFERED": "1"}
        piped = subprocess.PIPE if self.program.prefix else None
        self.process = subprocess.Popen(
            list(self.program.argv), env=env, stdout=piped,
            stderr=subprocess.STDOUT if self.program.prefix else None, start_new_session=True)
        self.restart_at = None
        if self.program.prefix:
            threading.Thread(target=self._pump, args=(self.process,), daemon=True).start()

    def _pump(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(f"{self.program.name:<{PREFIX_WIDTH}}| "
                             f"{line.decode(errors='replace')}")
            sys.stdout.flush()

    def exit_code(self) -> int | None:
        """Return the code it exited with, or None while it runs (or was never started)."""
        return None if self.process is None else self.process.poll()

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                pass


def restart_delay(restart_s: float, restarts: int) -> float:
    """Return the pause before the `restarts`-th restart: growing, at most MAX_RESTART_S."""
    return min(MAX_RESTART_S, restart_s * restarts)


def supervise(children: Sequence[Child], stop: threading.Event,
              report: Callable[[str], None] = _print) -> int:
    """Keep the children running until `stop` or an essential child's exit; return a code."""
    for child in children:
        child.start()
    while not stop.wait(POLL_S):
        now = time.monotonic()
        for child in children:
            code = child.exit_code()
            if code is not None and child.restart_at is None:
                if child.program.essential:
                    report(f"{child.program.name} exited with {code}; stopping")
                    return code
                child.restarts += 1
                delay = restart_delay(child.program.restart_s, child.restarts)
                report(f"{child.program.name} exited with {code}; restarting in {delay:.0f}s")
                child.restart_at = now + delay
            elif child.restart_at is not None and now >= child.restart_at:
                child.start()
    return 0


def shutdown(children: Sequence[Child], grace_s: float) -> None:
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
            child.process.wait()


def stop_on_signals(stop: threading.Event) -> None:
    """Set `stop` on SIGTERM or SIGINT (Ctrl-C), so that children are shut down in order."""
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())


def run(programs: Sequence[Program], grace_s: float,
        report: Callable[[str], None] = _print) -> int:
    """Supervise `programs` until a signal or an essential exit; stop them; return a code."""
    children = [Child(p) for p in programs]
    stop = threading.Event()
    stop_on_signals(stop)
    try:
        return supervise(children, stop, report)
    finally:
        shutdown(children, grace_s)
