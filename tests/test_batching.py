"""The batch committer and the loops around it survive what a dropped connection does."""

from __future__ import annotations

import asyncio
import threading

import pytest

from services.common.amqp import RequeueMessage
from services.common.batching import BatchCommitter
from services.common.runtime import BackgroundTaskDied, until_stopped


def test_a_handler_cancelled_during_its_write_does_not_kill_the_flusher() -> None:
    """A connection drop cancels handlers awaiting `add` while their batch is being written;
    the flusher must resolve the rest and go on writing later batches."""
    written: list[list[str]] = []
    writing = threading.Event()
    release = threading.Event()

    def write(items: list[str]) -> None:
        writing.set()
        release.wait(5)
        written.append(items)

    async def scenario() -> None:
        committer = BatchCommitter[str](write, max_batch=100, max_wait_s=0.01)
        stop = asyncio.Event()
        flusher = asyncio.create_task(committer.run(stop))
        dropped = asyncio.create_task(committer.add("dropped"))
        kept = asyncio.create_task(committer.add("kept"))
        await asyncio.to_thread(writing.wait, 5)
        dropped.cancel()  # what aio-pika does to a handler when its channel closes
        release.set()
        await asyncio.wait_for(kept, 5)
        await asyncio.wait_for(committer.add("after the drop"), 5)  # the flusher lives on
        stop.set()
        await asyncio.wait_for(flusher, 5)
        assert not flusher.cancelled() and flusher.exception() is None

    asyncio.run(scenario())
    assert written == [["dropped", "kept"], ["after the drop"]]


def test_a_failed_write_with_a_cancelled_handler_still_requeues_the_others() -> None:
    calls = 0

    def write(items: list[str]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("database went away")

    async def scenario() -> None:
        committer = BatchCommitter[str](write, max_batch=2, max_wait_s=0.01)
        stop = asyncio.Event()
        flusher = asyncio.create_task(committer.run(stop))
        cancelled = asyncio.create_task(committer.add("a"))
        other = asyncio.create_task(committer.add("b"))
        await asyncio.sleep(0)
        cancelled.cancel()
        with pytest.raises(RequeueMessage):
            await asyncio.wait_for(other, 5)
        await asyncio.wait_for(committer.add("c"), 5)
        stop.set()
        await asyncio.wait_for(flusher, 5)

    asyncio.run(scenario())
    assert calls == 2


def test_a_background_loop_that_dies_takes_the_service_down() -> None:
    async def broken_loop() -> None:
        await asyncio.sleep(0.01)
        raise asyncio.InvalidStateError("invalid state")

    async def scenario() -> None:
        stop = asyncio.Event()
        loop = asyncio.create_task(broken_loop(), name="results flusher")
        with pytest.raises(BackgroundTaskDied, match="results flusher"):
            await asyncio.wait_for(until_stopped(stop, loop), 5)

    asyncio.run(scenario())


def test_until_stopped_returns_on_stop_with_loops_still_running() -> None:
    async def scenario() -> None:
        stop = asyncio.Event()
        forever = asyncio.create_task(asyncio.sleep(60))
        asyncio.get_running_loop().call_later(0.01, stop.set)
        await asyncio.wait_for(until_stopped(stop, forever), 5)
        assert not forever.done()
        forever.cancel()

    asyncio.run(scenario())
