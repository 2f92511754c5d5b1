"""Serve the HTTP door with gunicorn (`agentq ingest`)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence

from services.common.settings import DEFAULT_PORTS, Settings
from services.common.webserver import gunicorn_command

APP = "services.ingest.app:create_app()"


def main(argv: Sequence[str] | None = None) -> int:
    """Replace this process with gunicorn serving the ingest app."""
    parser = argparse.ArgumentParser(prog="agentq ingest", description=__doc__)
    parser.add_argument("--port", type=int, default=None,
                        help=f"HTTP port (default AGENTQ_INGEST_PORT, {DEFAULT_PORTS['ingest']})")
    parser.add_argument("--host", default=None,
                        help="address to listen on (default AGENTQ_INGEST_HOST, 127.0.0.1)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    args = parser.parse_args(argv)
    settings = Settings()  # read now so a bad variable fails here, not in every worker
    command = gunicorn_command(APP, args.host or settings.ingest_host,
                               args.port or settings.ingest_port, args.workers, 8,
                               "--access-logfile", "-")
    env = dict(os.environ)
    # Workers count separately; a fresh shared directory lets /metrics sum them all.
    env.setdefault("PROMETHEUS_MULTIPROC_DIR",
                   tempfile.mkdtemp(prefix="agentq-ingest-metrics-"))
    sys.stdout.flush()
    os.execvpe(command[0], command, env)


if __name__ == "__main__":
    sys.exit(main())
