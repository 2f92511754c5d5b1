"""What both Celery benchmark peers share: settings and the provider client (importable
without Celery)."""

from __future__ import annotations

import functools
import os
from typing import Any

import openai


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
