"""A small real stack for the cost-control tests: mockllm, intake, router and workers as
processes, tasks published to `<ns>.submit` with a reply queue, results read back from it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pika

from bench.stack import AMQP_URL, PRICES, TIER_MODELS, Pipeline, running_pipeline, wait_until

__all__ = ["PRICES", "TIER_MODELS", "CostStack", "cost_stack"]


class CostStack:
    """Handles on a running stack: submit tasks over AMQP, collect their Results."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.stack, self.ns, self.mock = pipeline.stack, pipeline.ns, pipeline.mock
        self.connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()
        self.reply_queue = self.channel.queue_declare("", exclusive=True).method.queue
        self.results: dict[str, dict[str, Any]] = {}

    def submit(self, tasks: list[dict[str, Any]]) -> list[str]:
        ids = []
        for task in tasks:
            task = {"id": str(uuid.uuid4()), **task}
            ids.append(task["id"])
            self.channel.basic_publish(f"{self.ns}.submit", "task", json.dumps(task).encode(),
                                       pika.BasicProperties(content_type="application/json",
                                                            reply_to=self.reply_queue),
                                       mandatory=True)
        return ids

    def wait(self, ids: list[str], timeout: float = 30) -> list[dict[str, Any]]:
        """Return the Results of `ids`, in order, reading the reply queue until all are in."""
        def all_in() -> bool:
            while True:
                method, _, body = self.channel.basic_get(self.reply_queue, auto_ack=True)
                if method is None:
                    break
                result = json.loads(body)
                self.results[result["task_id"]] = result
            return all(i in self.results for i in ids)

        wait_until(all_in, timeout, f"{len(ids)} results", interval=0.05)
        return [self.results[i] for i in ids]

    def run(self, tasks: list[dict[str, Any]], timeout: float = 30) -> list[dict[str, Any]]:
        return self.wait(self.submit(tasks), timeout)

    def stats(self) -> dict[str, Any]:
        return self.pipeline.stats()

    def control(self, **changes: Any) -> None:
        self.pipeline.control(**changes)

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()


def _consumers(connection: Any, queue: str) -> int:
    channel = connection.channel()  # a failed passive declare closes its channel
    try:
        return int(channel.queue_declare(queue, passive=True).method.consumer_count)
    finally:
        if channel.is_open:
            channel.close()


@contextmanager
def cost_stack(tmp: Path, tiers: dict[str, list[str]] | None = None, extra: str = "",
               workers: int = 1, env: dict[str, str] | None = None) -> Iterator[CostStack]:
    """Start mockllm, intake, router and `workers` workers on a fresh namespace.

    `tiers` and `extra` shape the tier table (bench.stack.write_config)."""
    with running_pipeline(tmp, workers=workers, concurrency=16, services=("intake", "router"),
                          env={"AGENTQ_RETRY_BASE_MS": "100", "AGENTQ_RETRY_MAX_MS": "1000",
                               **(env or {})},
                          tiers=tiers, extra_config=extra) as pipeline:
        handle = CostStack(pipeline)
        try:
            conn, ns = handle.connection, handle.ns
            wait_until(lambda: (_consumers(conn, f"{ns}.submit")
                                and _consumers(conn, f"{ns}.tasks")
                                and _consumers(conn, f"{ns}.work.cheap") >= workers),
                       60, "intake, router and workers to consume")
            yield handle
        finally:
            handle.close()
