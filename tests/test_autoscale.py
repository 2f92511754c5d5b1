"""The scaling policy as plain functions, and `agentq autoscale` against a real backlog."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from bench.stack import Stack, free_port, http, wait_until, write_config
from services.autoscale.depth import estimate_unacked, growth_per_min
from services.autoscale.policy import (
    Cooldown,
    ScaleDecision,
    apply_cooldown,
    capacity_workers,
    suggest_workers,
)
from services.autoscale.telemetry import WorkerReports
from services.common.models import Event
from services.common.settings import Settings
from services.common.topology import Names as TopologyNames
from services.common.topology import declare, lane_route
from services.lanes.directory import LaneDirectory
from services.lanes.registry import LaneRegistry

# One worker: 32 slots, 0.8 s per task -> 40 tasks/s.
BASE: dict[str, Any] = dict(ready=0, unacked=0, growth_per_min=0.0, current=2, min_workers=1,
                            max_workers=10, per_worker_rate=40.0, concurrency=32, drain_s=60.0)


@pytest.mark.parametrize(("changes", "target", "why"), [
    ({}, 1, "queue empty"),
    ({"current": 7}, 1, "queue empty"),
    ({"min_workers": 2, "current": 5}, 2, "queue empty"),
    # in flight only: Little's law keeps the slots that are busy now
    ({"unacked": 64}, 2, "needed"),
    # a backlog of 9,600 clears in 60 s at 160 tasks/s: 4 workers, plus 1 for what is in hand
    ({"ready": 9_600, "unacked": 32}, 5, "needed"),
    # growth of 4,800/min = 80 tasks/s more than served: 2 more workers
    ({"ready": 10, "unacked": 32, "growth_per_min": 4_800.0}, 4, "needed"),
    # shrinking backlogs need no growth workers
    ({"ready": 10, "unacked": 32, "growth_per_min": -4_800.0}, 2, "needed"),
    ({"ready": 100_000, "unacked": 320}, 10, "maximum"),
    # 600 RPM feeds 10 tasks/s; at 4 tasks/s a worker, 3 workers are all the capacity can use
    ({"ready": 100_000, "per_worker_rate": 4.0, "concurrency": 4, "limiter_rpm": 600}, 3,
     "limiter's capacity"),
    # 60,000 TPM at 1,000 tokens a task feeds 1 task/s: one worker
    ({"ready": 5_000, "limiter_tpm": 60_000, "tokens_per_task": 1_000}, 1, "limiter's capacity"),
    ({"ready": 5_000, "limiter_tpm": 60_000}, 3, "needed"),  # no token size: RPM only
    # the minimum wins over the capacity
    ({"ready": 50_000, "min_workers": 3, "limiter_rpm": 60}, 3, "limiter's capacity"),
    # a capacity above the maximum leaves the maximum in charge
    ({"ready": 100_000, "limiter_rpm": 1_000_000}, 10, "maximum"),
])
def test_suggest_workers(changes: dict[str, Any], target: int, why: str) -> None:
    decision = suggest_workers(**{**BASE, **changes})
    assert decision.target == target, decision
    assert why in decision.reason
    assert decision.workers == decision.target


@pytest.mark.parametrize(("rate", "rpm", "tpm", "tokens", "expected"), [
    (10.0, 0, 0, 0, None),
    (10.0, 600, 0, 0, 1),
    (1.0, 600, 0, 0, 10),
    (1.0, 601, 0, 0, 11),
    (1.0, 6_000, 120_000, 1_000, 2),
    (0.0, 600, 0, 0, None),
])
def test_capacity_workers(rate: float, rpm: int, tpm: int, tokens: int,
                          expected: int | None) -> None:
    assert capacity_workers(rate, rpm, tpm, tokens) == expected


@pytest.mark.parametrize(("target", "current", "last", "now", "acted", "stamped"), [
    (4, 1, None, 100.0, 4, True),      # never scaled: act
    (4, 1, 99.0, 100.0, 1, False),     # up within the up cool-down (2 s): hold
    (4, 1, 97.0, 100.0, 4, True),      # up after it: act
    (1, 4, 80.0, 100.0, 4, False),     # down within the down cool-down (30 s): hold
    (1, 4, 60.0, 100.0, 1, True),      # down after it: act
    (3, 3, 99.9, 100.0, 3, False),     # nothing to do: the state stays
])
def test_cooldown(target: int, current: int, last: float | None, now: float, acted: int,
                  stamped: bool) -> None:
    state = Cooldown(last_change=last)
    decision, after = apply_cooldown(ScaleDecision(target, "x"), current, state, now,
                                     up_s=2.0, down_s=30.0)
    assert decision.target == acted
    assert after == (Cooldown(last_change=now) if stamped else state)
    if acted == current != target:
        assert decision.reason.startswith("cool-down")


@pytest.mark.parametrize(("queues", "reported", "expected"), [
    ([(10, 3)], None, 24),               # messages wait: every prefetch window is full
    ([(10, 3)], 2, 24),
    ([(0, 3)], None, 24),                # nothing reported: the windows are the bound
    ([(0, 3)], 5, 5),                    # the workers' own count
    ([(0, 3)], 99, 24),
    ([(0, 0)], None, 0),
    ([(10, 2), (0, 2), (0, 2)], None, 48),
    ([(10, 2), (0, 2), (0, 2)], 16, 16),  # only the busy queue holds messages
    ([(10, 2), (0, 2), (0, 2)], 20, 20),
])
def test_estimate_unacked(queues: list[tuple[int, int]], reported: int | None,
                          expected: int) -> None:
    assert estimate_unacked(queues, 8, reported) == expected


def test_growth_per_min_is_the_slope() -> None:
    assert growth_per_min([]) == 0.0
    assert growth_per_min([(0.0, 10)]) == 0.0
    assert growth_per_min([(0.0, 0), (1.0, 2), (2.0, 4)]) == pytest.approx(120.0)
    assert growth_per_min([(0.0, 90), (30.0, 0)]) == pytest.approx(-180.0)


def test_worker_reports() -> None:
    reports = WorkerReports(default_task_s=1.0)
    assert reports.in_flight(0.0) is None and reports.task_s == 1.0
    reports.observe(Event(type="worker.heartbeat", data={"worker_id": "a", "in_flight": 3}), 0)
    reports.observe(Event(type="worker.heartbeat", data={"worker_id": "b", "in_flight": 4}), 10)
    reports.observe(Event(type="task.completed", data={"llm_ms": 500}), 10)
    assert reports.in_flight(12.0) == 7
    assert reports.in_flight(20.0) == 4  # a's heartbeat is stale
    assert reports.task_s == pytest.approx(0.5)


# --- the autoscaler as a real process -----------------------------------------------------

class Events:
    """A queue bound to `<ns>.events` for scale events."""

    def __init__(self, amqp_url: str, ns: str) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        self.channel = self.connection.channel()
        self.queue = self.channel.queue_declare("", exclusive=True).method.queue
        self.channel.queue_bind(self.queue, f"{ns}.events", routing_key="scale.*")
        self.seen: list[dict[str, Any]] = []

    def read(self) -> list[dict[str, Any]]:
        while True:
            method, _, body = self.channel.basic_get(self.queue, auto_ack=True)
            if method is None:
                return self.seen
            self.seen.append(json.loads(body))

    def depth(self, queue: str) -> tuple[int, int]:
        ok = self.channel.queue_declare(queue, passive=True)
        return ok.method.message_count, ok.method.consumer_count

    def close(self) -> None:
        self.connection.close()


@pytest.fixture
def stack(settings: Settings, tmp_path: Path) -> Iterator[tuple[Stack, str]]:
    import asyncio

    asyncio.run(declare(settings.amqp_url, TopologyNames(settings.namespace)))
    mock_port = free_port()
    mock = f"http://127.0.0.1:{mock_port}"
    config = write_config(tmp_path / "agentq.toml", f"{mock}/v1")
    running = Stack({"AGENTQ_NAMESPACE": settings.namespace, "AGENTQ_CONFIG": str(config),
                     "AGENTQ_DATABASE_URL": settings.database_url,
                     "AGENTQ_METRICS_PORT": "-1"}, tmp_path)
    running.start("mockllm", "mockllm", "--port", str(mock_port), "--latency-ms", "500")
    try:
        wait_until(lambda: http("GET", f"{mock}/healthz")[0] == 200, 30, "mockllm")
        yield running, mock
    finally:
        running.stop_all()
        running.print_logs()


def test_autoscaler_follows_a_backlog_up_and_back_to_the_minimum(
        settings: Settings, stack: tuple[Stack, str]) -> None:
    running, mock = stack
    ns = settings.namespace
    events = Events(settings.amqp_url, ns)
    work = f"{ns}.work.cheap"
    try:
        # 4 slots x 0.5 s = 8 tasks/s a worker; a backlog of 240 should clear in 5 s.
        running.start("autoscale", "autoscale", "--min", "1", "--max", "4", "--interval", "0.5",
                      "--cooldown", "3", "--concurrency", "4", "--task-seconds", "0.5",
                      "--drain-seconds", "5", "--grace", "10")
        wait_until(lambda: events.depth(work)[1] == 1, 60, "the first worker")

        # All of it in two tenants' lanes, none in the tier's own queue: the autoscaler must
        # count the lanes to see any backlog at all.
        lanes = publish_work(settings, 240, tenants=("acme", "beta"))
        peak = wait_until(lambda: (c := events.depth(work)[1]) > 1 and c, 30,
                          "more than one worker")
        ups = [e for e in events.read() if e["type"] == "scale.up"]
        assert [(e["data"]["from"], e["data"]["to"]) for e in ups][0] == (0, 1)  # the start
        assert ups[1]["data"]["from"] == 1 and ups[1]["data"]["to"] > 1, ups
        assert ups[1]["service"] == "autoscale" and "ready" in ups[1]["data"]["reason"]
        # Seen in the lanes: waiting there, or already in the first worker's hands (a tick
        # that samples mid-publish finds every message prefetched, none ready).
        assert ups[1]["data"]["ready"] + ups[1]["data"]["unacked"] > 0, ups[1]

        def drained() -> bool:
            return (events.depth(work) == (0, 1)
                    and all(events.depth(lane) == (0, 1) for lane in lanes))

        wait_until(drained, 90, "the tier queue and lanes empty, one worker")
        downs = [e for e in events.read() if e["type"] == "scale.down"]
        assert downs and downs[-1]["data"]["to"] == 1, events.seen
        assert max(e["data"]["to"] for e in events.seen) >= peak
        # Draining lost nothing and ran nothing twice.
        wait_until(lambda: http("GET", f"{mock}/stats")[1]["completed"] >= 240, 30,
                   "240 completions")
        stats = http("GET", f"{mock}/stats")[1]
        assert stats["completed"] == 240 and stats["requests"] == 240, stats
        assert running.alive("autoscale"), running.log("autoscale")[-3000:]
    finally:
        events.close()
    assert running.stop("autoscale") == 0
    assert "draining" in running.log("autoscale")


def publish_work(settings: Settings, count: int, tenants: tuple[str, ...]) -> list[str]:
    """Put `count` tasks in the cheap tier's lanes of `tenants`, round robin, as the router
    would: each lane declared and registered by a LaneDirectory. Return the lane queues."""
    import asyncio

    import aio_pika
    from redis.asyncio import Redis

    names = TopologyNames(settings.namespace)

    async def routes() -> list[str]:
        connection = await aio_pika.connect(settings.amqp_url)
        redis = Redis.from_url(settings.redis_url)
        try:
            async with connection:
                directory = LaneDirectory(await connection.channel(),
                                          LaneRegistry(redis, names, 600.0))
                return [await directory.route("cheap", tenant) for tenant in tenants]
        finally:
            await redis.aclose()

    keys = asyncio.run(routes())
    assert keys == [lane_route("cheap", tenant) for tenant in tenants]
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    channel = connection.channel()
    channel.confirm_delivery()
    for i in range(count):
        tenant = tenants[i % len(tenants)]
        task = {"id": str(uuid.uuid4()), "prompt": f"scale {i} {uuid.uuid4()}",
                "kind": "classify", "cache": "off", "tenant": tenant}
        channel.basic_publish(names.work, lane_route("cheap", tenant),
                              json.dumps(task).encode(),
                              pika.BasicProperties(content_type="application/json",
                                                   delivery_mode=2), mandatory=True)
    connection.close()
    return [names.lane_queue("cheap", tenant) for tenant in tenants]
