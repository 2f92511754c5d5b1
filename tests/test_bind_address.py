"""Where the HTTP servers listen: this host only by default (`agentq up`, `agentq ingest`),
every interface when AGENTQ_*_HOST says so (the image sets 0.0.0.0). The real servers are
started as users start them, and reached (or not) over this machine's own network address."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bench.stack import free_port
from services.common.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def outward_address() -> str:
    """This machine's address on its first non-loopback interface."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
        address = probe.getsockname()[0]
    except OSError:
        address = "127.0.0.1"
    finally:
        probe.close()
    if address.startswith("127."):
        pytest.fail("this machine has no non-loopback IPv4 address to test binding with")
    return address


def accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@contextmanager
def serving(verb: list[str], port: int, env: dict[str, str], tmp_path: Path) -> Iterator[None]:
    log = (tmp_path / "server.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "services.cli", *verb, "--port", str(port)],
                               cwd=ROOT, env={**os.environ, **env}, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not accepts("127.0.0.1", port):
            assert process.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.1)
        yield
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


SERVERS = [(["ingest", "--workers", "1"], "AGENTQ_INGEST_HOST"),
           (["dashboard", "--no-collector", "--workers", "1"], "AGENTQ_DASHBOARD_HOST")]


def test_the_servers_listen_on_this_host_only_by_default() -> None:
    defaults = Settings()
    assert defaults.ingest_host == defaults.dashboard_host == defaults.metrics_host == "127.0.0.1"


@pytest.mark.parametrize(("verb", "variable"), SERVERS, ids=["ingest", "dashboard"])
def test_a_server_is_off_the_network_unless_its_host_says_so(
        verb: list[str], variable: str, settings: Settings, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    outward = outward_address()
    for name in ("AGENTQ_INGEST_HOST", "AGENTQ_DASHBOARD_HOST"):
        monkeypatch.delenv(name, raising=False)
    port = free_port()
    with serving(verb, port, {}, tmp_path):
        assert not accepts(outward, port)
    port = free_port()
    with serving(verb, port, {variable: "0.0.0.0"}, tmp_path):
        assert accepts(outward, port)
