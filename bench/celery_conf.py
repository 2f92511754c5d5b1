"""What both Celery benchmark peers share: settings, the provider client, the clean-up
(importable without Celery)."""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any

import openai
import pika


def peer_conf(queue: str) -> dict[str, Any]:
    """Celery settings for a peer whose tasks go to `queue` only (exchange and key of that
    name), with nothing else on the shared broker: no pidbox, no event exchange."""
    return {
        "task_default_queue": queue, "task_default_exchange": queue,
        "task_default_routing_key": queue,
        "worker_enable_remote_control": False, "worker_send_task_events": False,
        "task_send_sent_event": False, "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
    }


@functools.cache
def provider_client(max_retries: int) -> openai.OpenAI:
    """The worker process's one `openai` client of the simulated provider (BENCH_MOCK_URL),
    as users keep one: its threads or greenlets share it, and prefork children, which call
    this only after the fork, make their own."""
    return openai.OpenAI(base_url=os.environ["BENCH_MOCK_URL"], api_key="bench",
                         max_retries=max_retries, timeout=60)


def delete_peer_queue(amqp_url: str, queue: str) -> None:
    """Delete a peer's queue and its exchange of the same name; the run is over, so a broker
    that does not answer is let be."""
    with contextlib.suppress(Exception):
        connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        try:
            channel = connection.channel()
            channel.queue_delete(queue)
            channel.exchange_delete(queue)
        finally:
            connection.close()
