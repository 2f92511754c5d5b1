"""Both ingest doors publish the same message the same way, against the real RabbitMQ."""

from __future__ import annotations

import asyncio
import threading

import pytest

from services.common.amqp import Bus, PublishFailed
from services.common.loop_thread import LoopThread
from services.common.models import Task
from services.common.settings import Settings
from services.common.sync_publish import SyncPublisher, Unroutable
from services.common.topology import Names
from services.ingest.loop_publisher import LoopTaskPublisher, publish_task
from services.ingest.publisher import Publisher
from tests.conftest import Delivery, Rabbit


def _task(task_id: str) -> Task:
    return Task(id=task_id, tenant="acme", prompt="same bytes", priority=7,
                submitted_at=1_700_000_000.0, reply_to="replies.q")


def _shape(delivery: Delivery) -> tuple[object, ...]:
    props = delivery.properties
    return props.content_type, props.delivery_mode, props.priority


def test_the_http_and_amqp_doors_publish_identical_messages(settings: Settings, names: Names,
                                                            rabbit: Rabbit) -> None:
    publisher = Publisher(settings.amqp_url, names)
    try:
        publisher.publish_task(_task("same-1"))
    finally:
        publisher.close()

    async def from_the_loop() -> None:
        bus = await Bus.connect(settings.amqp_url, names)
        try:
            await publish_task(bus, _task("same-1"))
        finally:
            await bus.close()

    asyncio.run(from_the_loop())
    http, amqp = rabbit.get(names.tasks), rabbit.get(names.tasks)
    assert http.body == amqp.body == _task("same-1").model_dump_json().encode()
    assert _shape(http) == _shape(amqp) == ("application/json", 2, 7)


def test_the_loop_publisher_publishes_from_a_thread(settings: Settings, names: Names,
                                                    rabbit: Rabbit) -> None:
    async def main() -> None:
        bus = await Bus.connect(settings.amqp_url, names)
        try:
            publisher = LoopTaskPublisher(bus, asyncio.get_running_loop())
            await asyncio.to_thread(publisher.publish_task, _task("thread-1"))
        finally:
            await bus.close()

    asyncio.run(main())
    assert rabbit.get(names.tasks).json()["id"] == "thread-1"


def test_an_unroutable_publish_is_a_publish_failed_and_the_thread_carries_on(
        settings: Settings, names: Names, rabbit: Rabbit) -> None:
    sync = SyncPublisher(settings.amqp_url, "test")
    try:
        with pytest.raises(Unroutable):  # an exchange that does not exist
            sync.publish(f"{names.ns}.nowhere", "task", {"a": 1})
        with pytest.raises(PublishFailed):  # an exchange with nothing bound to the key
            sync.publish(names.tasks, "no-such-key", {"a": 1})
        sync.publish(names.tasks, "task", {"a": 1})
    finally:
        sync.close()
    assert rabbit.get(names.tasks).json() == {"a": 1}


def test_the_http_publisher_declares_a_missing_topology_from_a_request_thread(
        settings: Settings, namespace: str, rabbit: Rabbit) -> None:
    names = Names(namespace)  # nothing declared yet
    publisher = Publisher(settings.amqp_url, names)
    errors: list[BaseException] = []

    def request_thread() -> None:
        try:
            publisher.publish_task(_task("fresh-1"))
        except BaseException as exc:
            errors.append(exc)

    try:
        thread = threading.Thread(target=request_thread)
        thread.start()
        thread.join(timeout=30)
    finally:
        publisher.close()
    assert not errors, errors
    assert rabbit.get(names.tasks).json()["id"] == "fresh-1"


def test_the_loop_thread_runs_coroutines_and_times_them_out() -> None:
    loop = LoopThread("test-loop")
    cancelled = threading.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def answer() -> int:
        return 42

    try:
        assert loop.run(answer(), timeout_s=5) == 42
        with pytest.raises(TimeoutError):
            loop.run(forever(), timeout_s=0.1)
        assert cancelled.wait(5)
        assert loop.run(answer(), timeout_s=5) == 42  # the loop outlives a timeout
    finally:
        loop.close()
