"""The broker goes away mid-run: its application stopped and started again (a restart), and
every client connection closed from the broker's side, several times over. Every service
reconnects; the HTTP door answers 503 with Retry-After meanwhile, never another 5xx."""

from __future__ import annotations

import time

from bench.stack import wait_until
from tests.faults.harness import CONCURRENCY, WORKERS, FaultPipeline, Load, check, settle

SLOTS = WORKERS * CONCURRENCY


def test_broker_stop_app_and_start_app(faulty: FaultPipeline) -> None:
    # rabbitmqctl takes seconds to act on a busy host: a longer load keeps the doors busy
    # through the outage.
    load = Load(faulty, "broker-restart", seconds=12, allow_503=True).start()
    load.wait_accepted(0.25)
    faulty.rabbit.stop_app()
    time.sleep(3)
    faulty.rabbit.start_app()
    outcome = settle(faulty, load, timeout=120)
    # Calls under way when the connections went are redelivered: paid again, once each.
    check(outcome, extra_calls=SLOTS, http_503=load.statuses[503],
          amqp_retries=load.amqp_reconnects)


def test_broker_closes_every_connection_three_times(faulty: FaultPipeline) -> None:
    services = len(_service_connections(faulty))
    load = Load(faulty, "broker-close-connections", seconds=14, allow_503=True).start()
    load.wait_accepted(0.1)
    closed = []
    for _ in range(3):
        closed.append(faulty.rabbit.close_all_connections())
        # Each time with every service back on: the closes hit what is under way, not the
        # services' reconnect pauses.
        time.sleep(0.5)
        wait_until(lambda: len(_service_connections(faulty)) >= services, 30,
                   "the services to reconnect", interval=0.3)
    outcome = settle(faulty, load, timeout=120)
    check(outcome, extra_calls=len(closed) * SLOTS, closed=closed,
          http_503=load.statuses[503], amqp_retries=load.amqp_reconnects)


def _service_connections(run: FaultPipeline) -> list[str]:
    """The connections of the loop services (the HTTP door connects per thread, on demand)."""
    return [name for name in run.rabbit.connection_names()
            if name in ("router", "recorder", "worker", f"{run.ns}.intake")]
