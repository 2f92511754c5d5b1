"""The Celery settings both benchmark peers share (pure: importable without Celery)."""

from __future__ import annotations

from typing import Any


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
