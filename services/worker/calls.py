"""Make one provider call for a task: the healthy model, the shared limiter, a process slot.

The worker asks for a call and gets a Completion or a ProviderError; how the call waits for
capacity (`Throttle`), which model answers (`Breakers` via `CostControls.pick`) and how many
run at once in this process (`slots`) stay here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from services.common.amqp import Broker
from services.common.config import ModelEntry
from services.common.models import Task
from services.common.publishing import emit
from services.common.topology import STARTED_EVENT
from services.worker.controls import CostControls
from services.worker.provider import Completion, ProviderError, ProviderRateLimited, Providers
from services.worker.throttle import CallClock, Throttle

log = logging.getLogger(__name__)
SERVICE = "worker"


class ProviderCalls:
    """Run provider calls within the pools' shared limits and the process's slots."""

    def __init__(self, broker: Broker, providers: Providers, controls: CostControls,
                 throttle: Throttle, concurrency: int) -> None:
        self.broker = broker
        self.providers = providers
        self.controls = controls
        self.throttle = throttle
        self.concurrency = concurrency
        # Each lane may hand over up to its prefetch; this caps the provider calls under way
        # in the whole process at `concurrency`, whatever the lanes and tiers.
        self.slots = asyncio.Semaphore(concurrency)
        self._announcements: set[asyncio.Task[None]] = set()
        self._waiting: set[asyncio.Task[Any]] = set()  # handlers not yet granted a call

    @property
    def busy(self) -> int:
        return self.concurrency - self.slots._value

    async def call(self, task: Task, tier: str, attempt: int = 1,
                   clock: CallClock | None = None) -> Completion:
        """Call the tier's model; `clock` bounds the waits for capacity and records them."""
        entry = self.controls.pick(tier)  # the first model whose circuit breaker is closed
        handler = asyncio.current_task()
        assert handler is not None
        self._waiting.add(handler)
        try:
            completion = await self._within_limits(entry, task, tier, attempt,
                                                   clock or CallClock(), handler)
        except ProviderError as exc:
            self.controls.outcome(entry, exc)
            raise
        finally:
            self._waiting.discard(handler)
        self.controls.outcome(entry, None)
        return completion

    async def _within_limits(self, entry: ModelEntry, task: Task, tier: str, attempt: int,
                             clock: CallClock, handler: asyncio.Task[Any]) -> Completion:
        """Call once the throttle grants capacity; after a 429 call again as it decides,
        until the wait budget is spent (CapacityExhausted)."""
        delivered = time.monotonic()
        while True:
            permit = await self.throttle.grant(entry, task, clock)
            self._waiting.discard(handler)
            try:
                with clock.in_call():
                    # A slot is taken once the limiter granted the call: a task waiting for
                    # its tenant's fair share must not keep another tenant's granted call
                    # from running.
                    async with self.slots:
                        self.announce(task, tier, attempt)
                        completion = await self.providers.complete(entry, task)
            except ProviderRateLimited as exc:
                after = await self.throttle.refused(permit, exc, clock,
                                                    time.monotonic() - delivered)
                if after == "exhausted":
                    raise clock.exhausted(entry.provider) from None
                if after == "give_back":
                    raise  # to a delay queue, its wait budget in the message's header
                continue  # the hold it set makes the next grant wait as the provider asked
            except ProviderError:
                await self.throttle.failed(permit)
                raise
            await self.throttle.answered(permit, task, completion)
            return completion

    def announce(self, task: Task, tier: str, attempt: int) -> None:
        """Say the task is running, without holding the task up for the broker's confirm."""
        publish = asyncio.create_task(emit(self.broker, STARTED_EVENT, SERVICE,
                                           tenant=task.tenant, task_id=task.id, tier=tier,
                                           attempt=attempt))
        self._announcements.add(publish)
        publish.add_done_callback(self._announced)

    def _announced(self, publish: asyncio.Task[None]) -> None:
        self._announcements.discard(publish)
        if not publish.cancelled() and publish.exception() is not None:
            log.debug("task.started not published: %r", publish.exception())

    def give_back_waiting(self) -> None:
        """Send every task still waiting for the limiter back to its queue (at shutdown):
        none of it has started, and another worker can run it sooner than this one's grace."""
        for handler in list(self._waiting):
            handler.cancel()
