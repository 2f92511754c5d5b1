"""Tasks accepted per second by each ingest door, in this process (no gunicorn, no router).

    .venv/bin/python -m bench.ingest_doors [--tasks N] [--threads T]

AMQP: N tasks published to `<ns>.submit`, timed until all N wait in `<ns>.tasks`. HTTP: the
Flask app's test client, T threads posting N tasks in all. Figures vary with the host.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pika
from prometheus_client import CollectorRegistry

from bench.stack import AMQP_URL, scratch_namespace, wait_until
from services.common.settings import Settings
from services.common.topology import SUBMIT_ROUTING_KEY, Names, declare
from services.ingest import intake
from services.ingest.app import create_app
from services.ingest.metrics import make_metrics
from services.ingest.routes import EXTENSION


def _depth(channel: pika.adapters.blocking_connection.BlockingChannel, queue: str) -> int:
    return int(channel.queue_declare(queue, passive=True).method.message_count)


def amqp_door(settings: Settings, tasks: int) -> float:
    """Return tasks/s through intake, publish of the first to the last one queued."""
    names = Names(settings.namespace)
    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(
        intake.run(settings, stop, make_metrics(CollectorRegistry())),), daemon=True)
    thread.start()
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    try:
        wait_until(lambda: channel.queue_declare(names.submit, passive=True)
                   .method.consumer_count > 0, 30, "intake consuming")
        started = time.perf_counter()
        for _ in range(tasks):
            body = json.dumps({"id": uuid.uuid4().hex, "prompt": "bench the door"})
            channel.basic_publish(names.submit, SUBMIT_ROUTING_KEY, body.encode(),
                                  pika.BasicProperties(content_type="application/json"))
        wait_until(lambda: _depth(channel, names.tasks) >= tasks, 300, "tasks queued")
        elapsed = time.perf_counter() - started
    finally:
        connection.close()
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=60)
    return tasks / elapsed


def http_door(settings: Settings, tasks: int, threads: int) -> float:
    """Return tasks/s posted through the Flask app by `threads` threads."""
    app = create_app(settings)
    client = app.test_client()

    def post(_: int) -> int:
        return client.post("/v1/tasks", json={"prompt": "bench the door"}).status_code

    try:
        started = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            codes = list(pool.map(post, range(tasks)))
        elapsed = time.perf_counter() - started
    finally:
        ingest = app.extensions[EXTENSION]
        ingest.publisher.close()
        ingest.engine.dispose()
    assert codes.count(202) == tasks, {c: codes.count(c) for c in set(codes)}
    return tasks / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for door in ("amqp", "http"):
            (Path(tmp) / door).mkdir()
            with scratch_namespace(Path(tmp) / door, prefix="agentq_bench") as (ns, db):
                settings = Settings(namespace=ns, database_url=db, api_keys="",
                                    max_backlog=10 * args.tasks)
                asyncio.run(declare(settings.amqp_url, Names(ns)))
                rate = (amqp_door(settings, args.tasks) if door == "amqp"
                        else http_door(settings, args.tasks, args.threads))
                print(f"{door} door: {args.tasks} tasks, {rate:.0f} tasks/s")


if __name__ == "__main__":
    main()
