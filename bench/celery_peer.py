"""The Celery peer of `agentq bench pipeline`: what a user would build with Celery for the job.

A task that calls the provider once through the `openai` SDK (one client per worker process,
as users keep one) and returns its answer, stored by Celery's Redis result backend. Tasks go
through the same RabbitMQ as agentq's, to the same mockllm process. Celery's defaults are
kept (acks before the task runs, publishes without confirms, prefetch multiplier 4): this is
Celery as users run it, and it does less per task than agentq does (no routing, caches,
stored task rows, events or cost).

Workers are started by `run_peer` as

    python -m celery -A bench.celery_peer worker --pool POOL --concurrency N ...

and configured by environment variables (run_peer sets them):

    BENCH_CELERY_QUEUE   queue (and exchange, and routing key) of the tasks
    BENCH_MOCK_URL       the simulated provider's OpenAI base URL (…/v1)
    BENCH_REDIS_URL      the result backend
    BENCH_KEY_PREFIX     prefix of every result key (the run's namespace)

Celery is only in the `bench` extra: importing this module needs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import redis
from celery import Celery

from bench.celery_conf import delete_peer_queue, peer_conf, provider_client
from bench.limiter.system import kill_groups
from bench.proc_cpu import Meter
from bench.redis_calls import RedisCalls
from bench.stack import AMQP_URL, REDIS_URL, ROOT, delete_redis_keys, http, wait_until

# kombu reads the vhost from the path: "//" is the default vhost "/".
BROKER_URL = os.environ.get("BENCH_CELERY_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
TASK_NAME = "bench.pipeline_answer"
MODEL = "gpt-4o-mini"


def make_app(queue: str, redis_url: str, key_prefix: str) -> Celery:
    """Return a Celery app whose tasks go to `queue` and whose results go to Redis under
    `key_prefix` (so a run's keys can be found and deleted)."""
    app = Celery("agentq_bench_pipeline_peer", broker=BROKER_URL, backend=redis_url)
    app.conf.update(peer_conf(queue), task_ignore_result=False,
                    result_backend_transport_options={"global_keyprefix": key_prefix})
    return app


app = make_app(os.environ.get("BENCH_CELERY_QUEUE", "agentq_bench.celery"),
               os.environ.get("BENCH_REDIS_URL", REDIS_URL),
               os.environ.get("BENCH_KEY_PREFIX", "agentq_bench:"))


@app.task(name=TASK_NAME)  # type: ignore[misc]
def answer(prompt: str, submitted: float) -> dict[str, Any]:
    """Ask the provider once; the returned dict is the stored result."""
    response = provider_client(max_retries=2).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=64,
        temperature=0)
    usage = response.usage
    return {"output": response.choices[0].message.content, "model": response.model,
            "usage": usage.model_dump() if usage else None,
            "submitted": submitted, "finished": time.time()}


@dataclass(frozen=True)
class Pool:
    """A Celery pool configuration: `nodes` worker nodes, each `--pool kind -c concurrency`."""

    kind: str
    concurrency: int
    nodes: int = 1

    @classmethod
    def parse(cls, spec: str) -> Pool:
        """Parse `prefork:4`, `threads:16` or `threads:8x2` (two nodes)."""
        kind, _, rest = spec.partition(":")
        count, _, nodes = rest.partition("x")
        if kind not in ("prefork", "threads", "gevent", "solo") or not count.isdigit() \
                or (nodes and not nodes.isdigit()):
            raise ValueError(f"Celery pool {spec!r}: expected KIND:N or KIND:NxNODES with "
                             "KIND one of prefork, threads, gevent, solo")
        return cls(kind, int(count), int(nodes or 1))

    def __str__(self) -> str:
        return f"{self.kind}:{self.concurrency}" + (f"x{self.nodes}" if self.nodes > 1 else "")


@dataclass
class PeerRun:
    """What one Celery run measured."""

    pool: Pool
    tasks: int
    seconds: float
    succeeded: int
    latencies_ms: list[float]
    provider_calls: int
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per process group
    redis_calls: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds if self.seconds else 0.0


class _Peer:
    """Celery worker nodes for one run, in a namespace of their own; `close` removes all."""

    def __init__(self, pool: Pool, mock_url: str, tmp: Path) -> None:
        self.ns = f"agentq_bench_{uuid.uuid4().hex[:8]}"
        self.queue, self.prefix = f"{self.ns}.celery", f"{self.ns}:"
        self.redis = redis.Redis.from_url(REDIS_URL)
        self.app = make_app(self.queue, REDIS_URL, self.prefix)
        env = {**os.environ, "BENCH_CELERY_QUEUE": self.queue, "BENCH_MOCK_URL": mock_url,
               "BENCH_REDIS_URL": REDIS_URL, "BENCH_KEY_PREFIX": self.prefix,
               "PYTHONUNBUFFERED": "1"}
        self.nodes: list[subprocess.Popen[bytes]] = []
        for i in range(1, pool.nodes + 1):
            log = open(tmp / f"celery-{pool.kind}-{i}.log", "wb")  # noqa: SIM115 - closed with it
            self.nodes.append(subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", __name__, "worker",
                 "--pool", pool.kind, "--concurrency", str(pool.concurrency),
                 "--queues", self.queue, "--hostname", f"w{i}@{self.ns}",
                 "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
                 "--without-heartbeat"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True))

    def consumers(self) -> int:
        connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        try:
            return int(connection.channel().queue_declare(self.queue, passive=True)
                       .method.consumer_count)
        except pika.exceptions.ChannelClosedByBroker:  # not declared yet
            return 0
        finally:
            with contextlib.suppress(Exception):
                connection.close()

    def results(self, ids: list[str]) -> list[dict[str, Any]]:
        """Return the stored results of `ids` that are there so far."""
        keys = [f"{self.prefix}celery-task-meta-{task_id}" for task_id in ids]
        found = []
        for start in range(0, len(keys), 1000):
            found += [json.loads(raw) for raw in self.redis.mget(keys[start:start + 1000])
                      if raw is not None]
        return found

    def close(self) -> None:
        kill_groups(self.nodes, grace_s=10.0)
        with contextlib.suppress(Exception):
            self.app.close()
        delete_peer_queue(AMQP_URL, self.queue)
        with contextlib.suppress(Exception):
            delete_redis_keys(REDIS_URL, self.ns)
        self.redis.close()


def run_peer(pool: Pool, tasks: int, mock: str, tmp: Path,
             groups: dict[str, list[int]]) -> PeerRun:
    """Run `tasks` tasks through Celery with `pool` against the mockllm at `mock` (its base
    URL without /v1); `groups` are the shared processes to meter (mockllm, broker...)."""
    peer = _Peer(pool, f"{mock}/v1", tmp)
    try:
        wait_until(lambda: peer.consumers() >= pool.nodes, 90, f"Celery {pool} to consume",
                   interval=0.5)
        http("POST", f"{mock}/stats/reset")
        meter = Meter({**groups, "Celery workers": [p.pid for p in peer.nodes],
                       "client (this bench)": [os.getpid()]})
        redis_calls = RedisCalls(REDIS_URL)
        redis_calls.start()
        meter.start()
        ids = [str(uuid.uuid4()) for _ in range(tasks)]
        started = time.perf_counter()
        with peer.app.producer_or_acquire() as producer:
            for i, task_id in enumerate(ids):
                peer.app.send_task(TASK_NAME, args=[f"bench celery {i} {task_id}", time.time()],
                                   task_id=task_id, producer=producer)
        done: list[dict[str, Any]] = []

        def finished() -> bool:
            done[:] = peer.results(ids)
            return len(done) >= tasks

        wait_until(finished, 600, f"{tasks} Celery results", interval=0.25)
        seconds = time.perf_counter() - started
        cpu = meter.stop()
        commands = redis_calls.stop()
        calls = int(http("GET", f"{mock}/stats")[1]["completed"])
        ok = [r["result"] for r in done if r.get("status") == "SUCCESS"]
        latencies = sorted(1000.0 * (r["finished"] - r["submitted"]) for r in ok)
        return PeerRun(pool, tasks, seconds, len(ok), latencies, calls, cpu, commands)
    finally:
        peer.close()
