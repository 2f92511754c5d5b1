"""`agentq dashboard`: run the collector and the web app (gunicorn) side by side.

Both are child processes of the common supervisor (services/common/supervisor.py): SIGTERM or
SIGINT stops both; a collector that dies (its database gone, say) is restarted after a
growing pause while the web app keeps serving what is already in the database; if gunicorn
exits, everything stops. The collector waits out a RabbitMQ outage by itself, evaluating the
alerts (`broker_unreachable` among them) meanwhile.
"""

from __future__ import annotations

import argparse
import logging
import sys

from services.common import supervisor
from services.common.runtime import configure_logging
from services.common.settings import Settings
from services.common.supervisor import Program
from services.common.webserver import bind_address, gunicorn_command

log = logging.getLogger(__name__)
COLLECTOR_RESTART_S = 5.0
STOP_GRACE_S = 15.0
APP = "services.dashboard:create_app()"


def collector_command(extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "services.dashboard.collector", *extra]


def parse_args(argv: list[str] | None, settings: Settings) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="agentq dashboard", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=settings.dashboard_port)
    parser.add_argument("--host", default=settings.dashboard_host,
                        help="address to listen on (default AGENTQ_DASHBOARD_HOST, 127.0.0.1)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker")
    parser.add_argument("--no-collector", action="store_true",
                        help="serve the web app only (a collector runs elsewhere)")
    parser.add_argument("--eval-interval", type=float, default=5.0, metavar="S",
                        help="seconds between alert evaluations")
    parser.add_argument("--management-url", default=None,
                        help="RabbitMQ management API ('' to never use it)")
    return parser.parse_args(argv)


def programs(web_cmd: list[str], collector_cmd: list[str] | None) -> list[Program]:
    """Return the dashboard's children: gunicorn (essential) and the collector, if any."""
    web = Program("web", web_cmd, essential=True, prefix=False)
    if collector_cmd is None:
        return [web]
    return [Program("collector", collector_cmd, restart_s=COLLECTOR_RESTART_S, prefix=False),
            web]


def supervise(web_cmd: list[str], collector_cmd: list[str] | None) -> int:
    """Run both children until a signal or gunicorn's exit; return an exit code."""
    return supervisor.run(programs(web_cmd, collector_cmd), STOP_GRACE_S, log.warning)


def main(argv: list[str] | None = None) -> int:
    """Serve the dashboard on <host>:<port> with its collector."""
    settings = Settings()
    args = parse_args(argv, settings)
    configure_logging(settings.log_level, "dashboard")
    extra = ["--eval-interval", str(args.eval_interval)]
    if args.management_url is not None:
        extra += ["--management-url", args.management_url]
    log.info("dashboard on http://%s (namespace %s)", bind_address(args.host, args.port),
             settings.namespace)
    return supervise(gunicorn_command(APP, args.host, args.port, args.workers, args.threads,
                                      "--graceful-timeout", "10", "--timeout", "60"),
                     None if args.no_collector else collector_command(extra))


if __name__ == "__main__":
    raise SystemExit(main())
