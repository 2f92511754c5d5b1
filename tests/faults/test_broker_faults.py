"""The broker goes away mid-run: its application stopped and started again (a restart), and
every client connection closed from the broker's side, several times over. Every service
reconnects; the HTTP door answers 503 with Retry-After meanwhile, never another 5xx."""

from __future__ import annotations

import time

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
    load = Load(faulty, "broker-close-connections", seconds=6, allow_503=True).start()
    closed = []
    for share in (0.25, 0.5, 0.75):
        load.wait_accepted(share)
        closed.append(faulty.rabbit.close_all_connections())
    outcome = settle(faulty, load, timeout=120)
    check(outcome, extra_calls=len(closed) * SLOTS, closed=closed,
          http_503=load.statuses[503], amqp_retries=load.amqp_reconnects)
