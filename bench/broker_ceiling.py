"""The broker-only ceiling of agentq's message pattern: the same confirmed publishes and
deliveries per task as the pipeline, through agentq's own AMQP helper, with empty handlers.

Per task, as the services do it today (see docs/architecture.md section 2):

    who         publishes                                  deliveries
    HTTP door   ingest -> tasks                            -
    AMQP door   client -> submit, intake -> tasks          submit -> intake
    router      -> work lane, task.routed                  tasks -> router
    worker      task.started, -> results, task.completed   lane -> worker
    recorder    -                                          results.store, results.started
    collector   -                                          dashboard.results, dashboard.events x3

That is 6 publishes and 8 deliveries for an HTTP task, 7 and 9 for an AMQP one. The `slim`
pattern is what one event per task would leave (no task.routed, no task.started, so no
results.started either; task.completed only): 4 and 5 for HTTP, 5 and 6 for AMQP. Every stage
is a process of its own on `Bus` (publish = persistent + wait for the confirm; ack once the
handler returned), on the namespace's real topology (quorum pipeline queues, classic
telemetry queues; the tier's queue stands for the tenant's lane, a quorum queue
like it). Handlers only pass bytes of the pipeline's sizes on. The
run ends when every delivery of every task was acked.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pika

from bench.proc_cpu import Meter
from bench.stack import AMQP_URL, wait_until
from services.common.amqp import Bus
from services.common.topology import Names, declare_topology

TIER, TENANT = "cheap", "default"
# Bodies of about the pipeline's sizes: a Task, a Result, an Event (bytes of JSON).
TASK_BYTES, RESULT_BYTES, EVENT_BYTES = 400, 1200, 350
# The consumers' prefetch, as the services set theirs (intake, router, recorder, collector;
# the worker's is its concurrency).
PREFETCH = {"intake": 200, "router": 200, "worker": 64, "recorder": 1000, "collector": 500}


def publishes_per_task(slim: bool = False) -> dict[str, int]:
    """Return the confirmed publishes of one task through each door."""
    router, worker = (1, 2) if slim else (2, 3)
    return {"http": 1 + router + worker, "amqp": 2 + router + worker}


def deliveries_per_task(slim: bool = False) -> dict[str, int]:
    """Return the deliveries of one task through each door."""
    recorder, collector = (1, 2) if slim else (2, 4)
    return {"http": 1 + 1 + recorder + collector, "amqp": 1 + 1 + 1 + recorder + collector}


@dataclass
class CeilingRun:
    """What the ceiling run measured: tasks through both doors and the time they took."""

    tasks: int
    seconds: float
    publishes: int
    deliveries: int
    cpu: dict[str, float] = field(default_factory=dict)
    slim: bool = False

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds if self.seconds else 0.0


Handler = Callable[[Any], Awaitable[None]]


def _stage_handlers(stage: str, bus: Bus, names: Names, count: Callable[[], None],
                    slim: bool = False) -> dict[str, Handler]:
    """Return the queue -> empty handler map of one stage; each handler publishes what the
    service would, in the same order, then counts the delivery."""
    result, event = b"r" * RESULT_BYTES, b"e" * EVENT_BYTES

    async def intake(message: Any) -> None:
        await bus.publish(names.tasks, "task", message.body)
        count()

    async def router(message: Any) -> None:
        await bus.publish(names.work, TIER, message.body)
        if not slim:
            await bus.publish(names.events, "task.routed", event, mandatory=False)
        count()

    async def slim_worker(message: Any) -> None:
        await bus.publish(names.results, f"{TENANT}.succeeded", result)
        await bus.publish(names.events, "task.completed", event, mandatory=False)
        count()

    async def worker(message: Any) -> None:
        # task.started is not waited for before the call, the Result is.
        started = asyncio.create_task(
            bus.publish(names.events, "task.started", event, mandatory=False))
        await bus.publish(names.results, f"{TENANT}.succeeded", result)
        await bus.publish(names.events, "task.completed", event, mandatory=False)
        await started
        count()

    async def sink(message: Any) -> None:
        count()

    stages: dict[str, dict[str, Handler]] = {
        "intake": {names.submit: intake},
        "router": {names.tasks: router},
        "worker": {names.work_queue(TIER): slim_worker if slim else worker},
        "recorder": {names.results_store: sink,
                     **({} if slim else {names.started_store: sink})},
        "collector": {names.dashboard_results: sink, names.dashboard_events: sink},
    }
    return stages[stage]


def _stage_main(stage: str, namespace: str, counters: Any, index: int, slim: bool) -> None:
    """Run one stage until killed; counters[index] = deliveries it has acked so far."""

    def count() -> None:
        counters[index] += 1  # this stage is the only writer of its slot

    async def serve() -> None:
        names = Names(namespace)
        bus = await Bus.connect(AMQP_URL, names, name=f"ceiling-{stage}")
        for queue, handler in _stage_handlers(stage, bus, names, count, slim).items():
            await bus.consume(queue, handler, prefetch=PREFETCH[stage])
        await asyncio.Event().wait()

    asyncio.run(serve())


async def _declare(namespace: str) -> None:
    import aio_pika

    names = Names(namespace)
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await declare_topology(channel, names)


async def _publish(namespace: str, tasks_per_door: int, in_flight: int = 64) -> None:
    """Publish the tasks of both doors with confirms, `in_flight` at a time (the HTTP
    door's ingest publishes to tasks, the AMQP door's clients to submit)."""
    names = Names(namespace)
    bus = await Bus.connect(AMQP_URL, names, name="ceiling-client")
    slots = asyncio.Semaphore(in_flight)
    body = b"t" * TASK_BYTES

    async def one(exchange: str) -> None:
        async with slots:
            await bus.publish(exchange, "task", body)

    try:
        await asyncio.gather(*(one(exchange) for exchange in (names.tasks, names.submit)
                               for _ in range(tasks_per_door)))
    finally:
        await bus.connection.close()


STAGES = ("intake", "router", "worker", "recorder", "collector")


def run_ceiling(namespace: str, tasks_per_door: int, workers: int,
                groups: dict[str, list[int]], slim: bool = False) -> CeilingRun:
    """Run the pattern for `tasks_per_door` tasks through each door in `namespace` (the
    caller deletes it afterwards); `workers` worker stages, as the pipeline has workers;
    `slim` = the one-event pattern."""
    asyncio.run(_declare(namespace))
    names = Names(namespace)
    stages = [*[s for s in STAGES if s != "worker"], *["worker"] * workers]
    context = multiprocessing.get_context("spawn")
    counters = context.Array("q", len(stages), lock=False)
    processes = [context.Process(target=_stage_main, args=(stage, namespace, counters, i, slim),
                                 name=f"ceiling-{stage}", daemon=True)
                 for i, stage in enumerate(stages)]
    for process in processes:
        process.start()
    try:
        wait_until(lambda: _all_consuming(names, workers, slim), 60,
                   "the ceiling's consumers")
        per_door = deliveries_per_task(slim)
        expected = tasks_per_door * (per_door["http"] + per_door["amqp"])
        meter = Meter({**groups, "client (this bench)": [os.getpid()],
                       **{f"ceiling {s}-{i}": [int(p.pid or 0)] for i, (s, p)
                          in enumerate(zip(stages, processes, strict=True))}})
        meter.start()
        started = time.perf_counter()
        asyncio.run(_publish(namespace, tasks_per_door))
        wait_until(lambda: sum(counters) >= expected, 600, f"{expected} deliveries",
                   interval=0.05)
        seconds = time.perf_counter() - started
        cpu = meter.stop()
    finally:
        for process in processes:
            process.kill()
            process.join()
    per_pub = publishes_per_task(slim)
    return CeilingRun(2 * tasks_per_door, seconds,
                      tasks_per_door * (per_pub["http"] + per_pub["amqp"]), expected, cpu, slim)


def _all_consuming(names: Names, workers: int, slim: bool) -> bool:
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        channel = connection.channel()
        wanted = {names.submit: 1, names.tasks: 1, names.work_queue(TIER): workers,
                  names.results_store: 1, names.started_store: 0 if slim else 1,
                  names.dashboard_results: 1, names.dashboard_events: 1}
        return all(channel.queue_declare(queue, passive=True).method.consumer_count >= n
                   for queue, n in wanted.items())
    finally:
        connection.close()
