"""The Celery side: W workers (gevent pool) with rate_limit = RPM ÷ W, and their mockllm."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pika
import pika.exceptions
import redis

from bench.celery_conf import delete_peer_queue
from bench.limiter.estimate import EstimateError
from bench.limiter.system import Record, connect, kill_groups
from bench.limiter.workload import Options, Spec
from bench.stack import (
    AMQP_URL,
    REDIS_URL,
    ROOT,
    Stack,
    delete_redis_keys,
    free_port,
    http,
    wait_until,
)

PEER = "bench.limiter.celery_peer"  # the Celery app, as `celery -A` finds it


class CelerySystem:
    """W Celery workers (gevent pool) with rate_limit = RPM ÷ W, and their own mockllm."""

    def __init__(self, opts: Options, exit_stack: contextlib.ExitStack, tmp: Path) -> None:
        self.name = f"Celery rate_limit={opts.rpm / opts.workers:g}/m"
        self.ns = f"agentq_bench_{uuid.uuid4().hex[:8]}"
        self.queue = f"{self.ns}.celery"
        self.served_key = f"{self.ns}:served"
        self.redis = redis.Redis.from_url(REDIS_URL)
        exit_stack.callback(self._clean_broker_and_redis)
        port = free_port()
        self.mock = f"http://127.0.0.1:{port}"
        stack = self.stack = Stack({"AGENTQ_LOG_LEVEL": "WARNING"}, tmp)
        exit_stack.callback(stack.stop_all)
        stack.start("mockllm", "mockllm", "--port", str(port), *opts.provider_args())
        wait_until(lambda: http("GET", f"{self.mock}/healthz")[0] == 200, 30, "mockllm")
        env = {**os.environ, "BENCH_CELERY_QUEUE": self.queue,
               "BENCH_MOCK_URL": f"{self.mock}/v1",
               "BENCH_RATE_LIMIT": f"{opts.rpm / opts.workers:g}/m",
               "BENCH_REDIS_URL": REDIS_URL, "BENCH_SERVED_KEY": self.served_key,
               "PYTHONUNBUFFERED": "1"}
        self.workers: list[subprocess.Popen[bytes]] = []
        exit_stack.callback(lambda: kill_groups(self.workers, grace_s=5.0))
        for i in range(1, opts.workers + 1):
            log = open(tmp / f"celery-{i}.log", "wb")  # noqa: SIM115 - closed with the process
            self.workers.append(subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", PEER, "worker",
                 "--pool", "gevent", "--concurrency", str(opts.concurrency),
                 "--queues", self.queue, "--hostname", f"w{i}@{self.ns}",
                 "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
                 "--without-heartbeat"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True))
        # Imported here: Celery is needed only when this system runs (main checks for it).
        from bench.limiter.celery_peer import TASK_NAME, make_app

        self.task_name = TASK_NAME
        self.app = make_app(self.queue)
        exit_stack.callback(self._close_app)
        self.connection = connect(exit_stack)
        self.channel = self.connection.channel()
        self.read = 0
        # Wait until every worker consumes the queue (declared by the first of them).
        wait_until(lambda: self._consumers() >= opts.workers, 60, "Celery workers",
                   interval=0.5)

    def _consumers(self) -> int:
        try:
            return int(self.channel.queue_declare(self.queue, passive=True)
                       .method.consumer_count)
        except pika.exceptions.ChannelClosedByBroker:  # not declared yet: 404 closes it
            self.channel = self.connection.channel()
            return 0

    def _close_app(self) -> None:
        with contextlib.suppress(Exception):
            self.app.close()

    def _clean_broker_and_redis(self) -> None:
        delete_peer_queue(AMQP_URL, self.queue)
        with contextlib.suppress(Exception):
            delete_redis_keys(REDIS_URL, self.ns)
        self.redis.close()

    def publish(self, specs: list[Spec]) -> None:
        with self.app.producer_or_acquire() as producer:
            for s in specs:
                self.app.send_task(self.task_name, args=[s.tenant, s.messages, s.max_tokens],
                                   queue=self.queue, producer=producer)

    def collect(self) -> list[Record]:
        raw = self.redis.lrange(self.served_key, self.read, -1)
        self.read += len(raw)
        out = []
        for item in raw:
            at, tenant, tokens, status = json.loads(item)
            out.append(Record(float(at), str(tenant), int(tokens), status == "succeeded"))
        return out

    def pids(self) -> dict[str, list[int]]:
        return {"workers": [p.pid for p in self.workers],
                "mockllm": [self.stack.processes["mockllm"].pid]}

    def limiter_snapshot(self) -> dict[str, float] | None:
        return None

    def events_p99(self) -> float | None:
        return None

    def estimate_error(self) -> EstimateError | None:
        return None  # Celery's rate_limit counts requests, not tokens: nothing to compare
