"""Build the gunicorn command line that serves a Flask app (ingest, dashboard)."""

from __future__ import annotations

import sys


def _has_setting(name: str) -> bool:
    from gunicorn.config import KNOWN_SETTINGS

    return any(setting.name == name for setting in KNOWN_SETTINGS)


def bind_address(host: str, port: int) -> str:
    """Return gunicorn's `--bind` for host and port (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def gunicorn_command(app: str, host: str, port: int, workers: int, threads: int,
                     *extra: str) -> list[str]:
    """Return the command that serves `app` on host:port with gthread workers."""
    command = [sys.executable, "-m", "gunicorn", "--bind", bind_address(host, port),
               "--workers", str(workers), "--threads", str(threads),
               "--worker-class", "gthread", *extra]
    if _has_setting("control_socket_disable"):
        # gunicorn 24+ opens a control socket at one fixed path per user: two servers on one
        # host (ingest and dashboard) would fight over it, and agentq never uses it.
        command.append("--no-control-socket")
    return [*command, app]
