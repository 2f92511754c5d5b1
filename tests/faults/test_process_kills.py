"""kill -9 of a service mid-run: the worker, the router, the results recorder, an ingest
gunicorn worker. The process is started again (as `agentq up` or the container runtime
would); every task still ends, and the provider is paid again only for calls in flight."""

from __future__ import annotations

import os
import signal

import pytest

from tests.faults.harness import CONCURRENCY, WORKERS, FaultPipeline, Load, check, settle


def test_kill_a_worker(faulty: FaultPipeline) -> None:
    load = Load(faulty, "kill-worker").start()
    load.wait_accepted(0.5)
    in_flight = faulty.stats()["in_flight"]
    faulty.kill("worker-1")
    faulty.pipeline.start_worker("1-again")
    outcome = settle(faulty, load)
    # What worker-1 held is redelivered: its calls under way, and those answered but not yet
    # published, are paid again. Bounded by the pipeline's call slots.
    check(outcome, extra_calls=WORKERS * CONCURRENCY, in_flight_at_kill=in_flight)


@pytest.mark.parametrize("service", ["router", "recorder", "intake"])
def test_kill_a_pipeline_service(faulty: FaultPipeline, service: str) -> None:
    load = Load(faulty, f"kill-{service}").start()
    load.wait_accepted(0.5)
    faulty.kill(service)
    faulty.stack.start(f"{service}-again", service)
    outcome = settle(faulty, load)
    # The router's unacked tasks come back and are routed again: a copy may meet the first
    # one running, once per call slot at most.
    check(outcome, extra_calls=WORKERS * CONCURRENCY)


def test_kill_an_ingest_gunicorn_worker(faulty: FaultPipeline) -> None:
    load = Load(faulty, "kill-ingest-worker", http_threads=6).start()
    load.wait_accepted(0.3)
    victims = faulty.gunicorn_workers()
    os.kill(victims[0], signal.SIGKILL)
    load.wait_accepted(0.6)
    os.kill(faulty.gunicorn_workers()[-1], signal.SIGKILL)
    outcome = settle(faulty, load)
    check(outcome, extra_calls=0, connection_errors=load.connection_errors)
