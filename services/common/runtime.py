"""Run an async service: logging, metrics port, graceful SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

from prometheus_client import start_http_server

from services.common.settings import Settings

log = logging.getLogger(__name__)

Service = Callable[[Settings, asyncio.Event], Awaitable[None]]


def configure_logging(level: str, name: str) -> None:
    logging.basicConfig(level=level.upper(),
                        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiormq").setLevel(logging.WARNING)
    logging.getLogger("aio_pika").setLevel(logging.WARNING)
    for client_logger in ("httpx", "httpx2"):  # whichever one the openai SDK ships on
        logging.getLogger(client_logger).setLevel(logging.WARNING)


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    """Expose Prometheus metrics; a taken port (several workers on one host) only warns."""
    if port <= 0:
        return
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        log.warning("metrics port %d unavailable (%s); metrics not exposed", port, exc)


class BackgroundTaskDied(RuntimeError):
    """A loop the service depends on ended before the service was told to stop."""


async def until_stopped(stop: asyncio.Event, *background: asyncio.Task[None]) -> None:
    """Wait for `stop`; if a background loop (a flusher, a poller) ends first, raise.

    A loop that died while its process lives on would hold its messages unacked for good;
    raising takes the service down, so `agentq up` or the container runtime restarts it.
    """
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([stopped, *background], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    for task in background:
        if task.done() and not stop.is_set():
            error = None if task.cancelled() else task.exception()
            raise BackgroundTaskDied(f"{task.get_name()} ended: {error!r}") from error


async def every(interval_s: float, job: Callable[[], Awaitable[object]], name: str,
                stop: asyncio.Event, on_failure: Callable[[], None] | None = None) -> None:
    """Run `job` every `interval_s` until `stop`; a failure is logged and retried next time."""
    while not stop.is_set():
        try:
            await job()
        except Exception:
            if on_failure is not None:
                on_failure()
            log.exception("%s failed; trying again in %.0f s", name, interval_s)
        try:
            await asyncio.wait_for(stop.wait(), interval_s)
        except TimeoutError:
            pass


def run(service: Service, settings: Settings, name: str, default_metrics_port: int) -> int:
    """Run `service` until SIGTERM/SIGINT sets its stop event; return an exit code."""
    configure_logging(settings.log_level, name)
    serve_metrics(settings.metrics_port or default_metrics_port, settings.metrics_host)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await service(settings, stop)

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        return 130
    return 0
