"""The agentq side: the pipeline in a scratch namespace, one metrics port per worker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pika

from bench.limiter.estimate import EstimateError, Sample, sample, summarise
from bench.limiter.measure import limiter_figures
from bench.limiter.system import Record, connect, kill_groups
from bench.limiter.workload import Options, Spec
from bench.stack import (
    AMQP_URL,
    PIPELINE_SERVICES,
    Pipeline,
    free_port,
    running_pipeline,
    wait_until,
)
from services.common.topology import Names, declare


def metrics(port: int) -> str:
    """Return the Prometheus page of the worker whose metrics port is `port`."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        page: str = response.read().decode()
    return page


class Collector(threading.Thread):
    """Consume agentq's results and limiter.stats events on a connection of its own."""

    def __init__(self, ns: str, max_tokens: int) -> None:
        super().__init__(name="bench-collector", daemon=True)
        self.max_tokens = max_tokens
        self.connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        channel = self.connection.channel()
        results = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(results, f"{ns}.results", "#")
        events = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(events, f"{ns}.events", "limiter.stats")
        channel.basic_consume(results, self._result, auto_ack=True)
        channel.basic_consume(events, self._event, auto_ack=True)
        self.records: list[Record] = []
        self.sent: dict[str, Spec] = {}  # task id -> what was asked, until its Result
        self.samples: list[Sample] = []
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    def _result(self, _ch: Any, _m: Any, _p: Any, body: bytes) -> None:
        r = json.loads(body)
        usage = r.get("usage") or {}
        # Counted as the pool's TPM counts it: the provider reserves max_tokens at admission.
        tokens = int(usage.get("prompt_tokens", 0)) + max(
            int(usage.get("completion_tokens", 0)), self.max_tokens)
        with self.lock:
            self.records.append(Record(time.time(), r["tenant"], tokens,
                                       r["status"] == "succeeded"))
            spec = self.sent.pop(r["task_id"], None)
        if spec is not None and r["status"] == "succeeded":
            compared = sample(spec.messages, spec.max_tokens, r["model"], usage)
            if compared is not None:
                with self.lock:
                    self.samples.append(compared)

    def _event(self, _ch: Any, _m: Any, _p: Any, body: bytes) -> None:
        with self.lock:
            self.events.append((time.time(), json.loads(body).get("data", {})))

    def run(self) -> None:
        while not self.stopping.is_set():
            self.connection.process_data_events(time_limit=0.2)

    def take(self) -> list[Record]:
        with self.lock:
            out, self.records = self.records, []
        return out

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=5)
        with contextlib.suppress(Exception):
            self.connection.close()


class AgentqSystem:
    """The agentq pipeline in a scratch namespace, one metrics port per worker."""

    def __init__(self, opts: Options, exit_stack: contextlib.ExitStack, tmp: Path) -> None:
        self.name = "agentq"
        self.opts = opts
        self.pipeline: Pipeline = exit_stack.enter_context(running_pipeline(
            tmp, workers=0, env={"AGENTQ_LOG_LEVEL": "WARNING"},
            mock_args=opts.provider_args(), rpm=opts.rpm, tpm=opts.tpm))
        exit_stack.callback(self._stop_workers)  # before the rest stops: see _stop_workers
        self.mock, self.ns = self.pipeline.mock, self.pipeline.ns
        asyncio.run(declare(AMQP_URL, Names(self.ns)))
        self.ports = [free_port() for _ in range(opts.workers)]
        for i, port in enumerate(self.ports, 1):
            self.pipeline.stack.start(f"worker-{i}", "worker", "--concurrency",
                                      str(opts.concurrency),
                                      env={"AGENTQ_METRICS_PORT": str(port)})
        for port in self.ports:
            wait_until(lambda p=port: metrics(p), 60, f"worker metrics on port {port}")
        self.collector = Collector(self.ns, opts.max_tokens)
        self.collector.start()
        exit_stack.callback(self.collector.stop)
        self.channel = connect(exit_stack).channel()
        self.props = pika.BasicProperties(content_type="application/json", delivery_mode=2)
        self.window_events_from = 0.0

    def _stop_workers(self) -> None:
        # Workers drain their in-flight calls for up to 30 s on SIGTERM; a benchmark's
        # unfinished backlog is thrown away, so a few seconds are enough.
        names = [n for n in self.pipeline.stack.processes if n.startswith("worker-")]
        kill_groups([self.pipeline.stack.processes[n] for n in names], grace_s=3.0)
        for n in names:
            self.pipeline.stack.processes.pop(n, None)

    def publish(self, specs: list[Spec]) -> None:
        for s in specs:
            task_id = str(uuid.uuid4())
            with self.collector.lock:
                self.collector.sent[task_id] = s
            body = {"id": task_id, "tenant": s.tenant, "messages": s.messages,
                    "max_tokens": s.max_tokens, "tier": "cheap", "cache": "off",
                    "metadata": {"bench": "limiter"}}
            self.channel.basic_publish(f"{self.ns}.submit", "task", json.dumps(body).encode(),
                                       self.props)

    def collect(self) -> list[Record]:
        return self.collector.take()

    def pids(self) -> dict[str, list[int]]:
        processes = self.pipeline.stack.processes
        return {"workers": [p.pid for n, p in processes.items() if n.startswith("worker-")],
                "mockllm": [processes["mockllm"].pid],
                "+".join(PIPELINE_SERVICES): [
                    p.pid for n, p in processes.items() if n in PIPELINE_SERVICES]}

    def limiter_snapshot(self) -> dict[str, float] | None:
        total: dict[str, float] = {}
        for port in self.ports:
            for key, n in limiter_figures(metrics(port)).items():
                total[key] = total.get(key, 0.0) + n
        if not self.window_events_from:
            self.window_events_from = time.time()
        return total

    def estimate_error(self) -> EstimateError | None:
        with self.collector.lock:
            return summarise(self.collector.samples)

    def events_p99(self) -> float | None:
        with self.collector.lock:
            events = [d for t, d in self.collector.events if t >= self.window_events_from]
        values = [float(d.get("decision_p99_ms", 0.0)) for d in events]
        return max(values) if values else None
