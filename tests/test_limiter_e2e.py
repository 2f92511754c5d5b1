"""The shared limiter in the real worker path: several workers, one provider budget, no 429s."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pika
import pytest

from bench.stack import AMQP_URL, Pipeline, http, running_pipeline, wait_until
from tests.conftest import Rabbit

RPM = 240  # 4 calls/s once the minute's burst is spent
pytestmark = pytest.mark.database


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    # The provider enforces the same RPM the tier table declares, as a real key would.
    with running_pipeline(tmp_path_factory.mktemp("limited"), workers=3, concurrency=32,
                          mock_args=("--rpm", str(RPM)), rpm=RPM) as running:
        yield running


def test_workers_share_one_budget_and_the_provider_never_says_429(limited: Pipeline) -> None:
    tasks = [{"prompt": f"limited {i} {uuid.uuid4()}", "tenant": f"t{i % 2}"}
             for i in range(RPM + 24)]
    ids = [item["id"] for chunk in range(0, len(tasks), 100)
           for item in _post_list(limited, tasks[chunk:chunk + 100])]
    done = limited.wait_done(ids, timeout=120)
    assert {body["status"] for body in done.values()} == {"succeeded"}
    stats = limited.stats()
    assert stats["rate_limited"] == 0
    assert stats["completed"] == len(tasks)
    # Past the burst the calls came at the refill rate: some tasks waited for capacity.
    assert max(body["result"]["latency_ms"]["total"] for body in done.values()) > 1000


def test_limiter_stats_are_published_for_the_dashboard(limited: Pipeline) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(queue, f"{limited.ns}.events", "limiter.stats")
    limited.submit({"prompt": f"one more {uuid.uuid4()}"})

    def stats_event() -> dict | None:
        method, _, body = channel.basic_get(queue, auto_ack=True)
        return json.loads(body) if method else None

    event = wait_until(stats_event, 20, "a limiter.stats event")
    assert event["data"]["pool"] == "mock" and event["data"]["rpm_limit"] == RPM
    connection.close()


FLOOD_RPM = 120  # 2 calls/s once the burst is spent


@pytest.fixture(scope="module")
def flooded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    with running_pipeline(tmp_path_factory.mktemp("flooded"), workers=2, concurrency=16,
                          mock_args=("--rpm", str(FLOOD_RPM)), rpm=FLOOD_RPM) as running:
        yield running


def test_a_light_tenant_is_served_while_a_flood_waits_in_its_own_lane(
        flooded: Pipeline) -> None:
    # The flood alone spends the burst, then queues far more than the refill serves.
    flood = [item["id"] for chunk in range(0, 300, 100) for item in _post_list(
        flooded, [{"prompt": f"flood {i} {uuid.uuid4()}", "tenant": "flood", "tier": "cheap"}
                  for i in range(chunk, chunk + 100)])]
    wait_until(lambda: flooded.stats()["completed"] >= FLOOD_RPM * 0.8, 60,
               "the flood to spend the burst")
    light = [item["id"] for item in _post_list(
        flooded, [{"prompt": f"light {i} {uuid.uuid4()}", "tenant": "light", "tier": "cheap"}
                  for i in range(6)])]
    done = flooded.wait_done(light, timeout=60)
    assert {body["status"] for body in done.values()} == {"succeeded"}
    # Behind the flood in one FIFO queue they would have waited for ~150 s of its tasks.
    waiting = [i for i in flood if flooded.task(i)["status"] in ("queued", "running")]
    assert len(waiting) > 100
    assert max(body["result"]["latency_ms"]["total"] for body in done.values()) < 20_000
    # Every worker took the light tenant's lane; the tier's own queue holds nothing.
    rabbit = Rabbit(AMQP_URL)
    try:
        queues = {q: rabbit.depth(q) for q in (f"{flooded.ns}.work.cheap.light",
                                               f"{flooded.ns}.work.cheap.flood",
                                               f"{flooded.ns}.work.cheap")}
    finally:
        rabbit.close()
    assert queues[f"{flooded.ns}.work.cheap.light"] == (0, 2)
    assert queues[f"{flooded.ns}.work.cheap.flood"][0] > 0  # type: ignore[index]
    assert queues[f"{flooded.ns}.work.cheap"] == (0, 2)


def _post_list(pipeline: Pipeline, tasks: list[dict]) -> list[dict]:

    status, body = http("POST", f"{pipeline.ingest}/v1/tasks", tasks)
    assert status == 202, body
    return list(body)
