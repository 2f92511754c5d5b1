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

from tests.stack import ScratchDatabase, Stack, delete_namespace, free_port, http, wait_until

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
REDIS_URL = "redis://127.0.0.1:6379/0"
PRICES = {"gpt-4o-mini": (0.15, 0.60), "claude-3-5-haiku": (0.80, 4.00), "gpt-4o": (2.50, 10.00),
          "claude-sonnet-4": (3.00, 15.00), "o1": (15.00, 60.00)}
TIER_MODELS = {"cheap": ["gpt-4o-mini"], "standard": ["gpt-4o"], "premium": ["o1"]}


def tier_table(mock_url: str, tiers: dict[str, list[str]] | None = None, extra: str = "") -> str:
    """Return an agentq.toml on the simulated provider; `extra` adds sections."""
    lines = [f'[providers.mock]\nbase_url = "{mock_url}"\n']
    for tier, models in (tiers or TIER_MODELS).items():
        entries = ", ".join(
            f'{{ provider = "mock", model = "{m}", input_per_mtok = {PRICES[m][0]}, '
            f"output_per_mtok = {PRICES[m][1]} }}" for m in models)
        lines.append(f"[tiers.{tier}]\nmodels = [{entries}]\n")
    lines.append('[routing.kinds]\nclassify = "cheap"\nextract = "cheap"\n'
                 'summarize = "standard"\nreason = "premium"\n')
    return "\n".join(lines) + extra


class CostStack:
    """Handles on a running stack: submit tasks over AMQP, collect their Results."""

    def __init__(self, stack: Stack, ns: str, mock: str) -> None:
        self.stack, self.ns, self.mock = stack, ns, mock
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
        return dict(http("GET", f"{self.mock}/stats")[1])

    def control(self, **changes: Any) -> None:
        status, body = http("POST", f"{self.mock}/control", changes)
        assert status == 200, body

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
    """Start mockllm, intake, router and `workers` workers on a fresh namespace."""
    ns = f"agentq_test_{uuid.uuid4().hex[:8]}"
    database = ScratchDatabase(ns, tmp)
    mock_port = free_port()
    mock = f"http://127.0.0.1:{mock_port}"
    config_path = tmp / "agentq.toml"
    config_path.write_text(tier_table(f"{mock}/v1", tiers, extra))
    stack = Stack({"AGENTQ_NAMESPACE": ns, "AGENTQ_DATABASE_URL": database.url,
                   "AGENTQ_CONFIG": str(config_path), "AGENTQ_AMQP_URL": AMQP_URL,
                   "AGENTQ_REDIS_URL": REDIS_URL, "AGENTQ_METRICS_PORT": "-1",
                   "AGENTQ_RETRY_BASE_MS": "100", "AGENTQ_RETRY_MAX_MS": "1000",
                   **(env or {})}, tmp)
    handle: CostStack | None = None
    try:
        stack.start("mockllm", "mockllm", "--port", str(mock_port))
        for name in ("intake", "router"):
            stack.start(name, name)
        for i in range(workers):
            stack.start(f"worker-{i}", "worker", "--concurrency", "16")
        wait_until(lambda: http("GET", f"{mock}/healthz")[0] == 200, 30, "mockllm")
        handle = CostStack(stack, ns, mock)
        conn = handle.connection
        wait_until(lambda: (_consumers(conn, f"{ns}.submit") and _consumers(conn, f"{ns}.tasks")
                            and _consumers(conn, f"{ns}.work.cheap") >= workers),
                   60, "intake, router and workers to consume")
        yield handle
    finally:
        if handle is not None:
            handle.close()
        stack.stop_all()
        delete_namespace(AMQP_URL, REDIS_URL, ns)
        database.drop()
