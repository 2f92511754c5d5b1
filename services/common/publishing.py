"""Publish Results and Events: the two messages every service sends the same way."""

from __future__ import annotations

import logging
from typing import Any

from services.common import events
from services.common.amqp import Broker, PublishFailed
from services.common.models import Event, Result

log = logging.getLogger(__name__)


async def publish_result(bus: Broker, result: Result, reply_to: str | None = None) -> None:
    """Publish a Result under `<tenant>.<status>`, and to the client's reply queue if any."""
    await bus.publish(bus.names.results, f"{result.tenant}.{result.status}", result,
                      message_id=result.task_id)
    if reply_to:
        try:
            # Not mandatory: a client that went away must not hold the pipeline up.
            await bus.send_to_queue(reply_to, result, correlation_id=result.task_id,
                                    mandatory=False)
        except PublishFailed:
            log.warning("could not send the result of %s to %s", result.task_id, reply_to)


async def emit(bus: Broker, type_: str, service: str, *, tenant: str | None = None,
               task_id: str | None = None, **data: Any) -> None:
    """Publish a telemetry Event (routing key = its type), its data checked by its model.

    Transient and not confirmed: an event is a dashboard figure, never a task's result, so it
    costs the broker no disk write and its sender no round trip, and one the broker drops
    (or a channel that just closed) is logged, never raised into the task's handler.
    """
    events.checked(type_, data)
    event = Event(type=type_, service=service, tenant=tenant, task_id=task_id, data=data)
    try:
        await bus.publish(bus.names.events, type_, event, mandatory=False, confirm=False)
    except PublishFailed as exc:
        log.warning("event %s of %s not published: %s", type_, task_id or service, exc)
