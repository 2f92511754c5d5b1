"""Start the real simulated provider (`agentq mockllm`) for tests that call it over HTTP."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.stack import ROOT, free_port, http, wait_until


@contextmanager
def running_mockllm(log_dir: Path, *args: str) -> Iterator[str]:
    """Run `agentq mockllm` on a free port and yield its base URL (`.../v1`)."""
    port = free_port()
    with (log_dir / f"mockllm-{port}.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "mockllm", "--port", str(port), *args],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        root = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: http("GET", f"{root}/healthz")[0] == 200, 30, "mockllm")
            yield f"{root}/v1"
        finally:
            process.terminate()
            process.wait(timeout=20)


def last_request(base_url: str) -> dict[str, object]:
    """Return what the simulated provider recorded of the last request it was sent."""
    status, body = http("GET", base_url.removesuffix("/v1") + "/_agentq/last-request")
    assert status == 200, body
    assert isinstance(body, dict)
    return body
