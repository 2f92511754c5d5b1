"""A pool of `agentq worker` child processes that grows at once and shrinks by draining."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence

log = logging.getLogger(__name__)
KILL_MARGIN_S = 10.0  # past its grace, a worker that has not exited is killed


class WorkerPool:
    """Start workers with one verb line; stop them with SIGTERM and wait until they exit."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str], grace_s: float,
                 metrics_port_base: int = 0) -> None:
        self.args = list(args)
        self.env = dict(env)
        self.grace_s = grace_s
        self.metrics_port_base = metrics_port_base  # 0 = no metrics port per worker
        self.running: dict[int, asyncio.subprocess.Process] = {}  # slot -> process
        self._draining: set[asyncio.Task[None]] = set()

    @property
    def size(self) -> int:
        """Return the workers taking messages (draining ones no longer count)."""
        return len(self.running)

    @property
    def draining(self) -> int:
        return len(self._draining)

    async def start(self) -> None:
        """Start one worker in the lowest free slot (its metrics port follows the slot)."""
        slot = next(i for i in range(1, len(self.running) + 2) if i not in self.running)
        env = dict(self.env)
        if self.metrics_port_base > 0:
            env["AGENTQ_METRICS_PORT"] = str(self.metrics_port_base + slot)
        # Same process group as the autoscaler: a Ctrl-C or a group SIGTERM drains them too.
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.cli", *self.args, env=env)
        self.running[slot] = process
        log.info("started worker %d (pid %d)", slot, process.pid)

    def stop_one(self) -> None:
        """Drain the newest worker in the background; it stops counting at once."""
        slot = max(self.running)
        process = self.running.pop(slot)
        task = asyncio.create_task(self._drain(slot, process))
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)

    async def scale_to(self, target: int) -> None:
        while self.size < target:
            await self.start()
        while self.size > target:
            self.stop_one()

    def reap(self) -> list[int]:
        """Forget workers that exited on their own; return their exit codes."""
        gone = {slot: p for slot, p in self.running.items() if p.returncode is not None}
        for slot, process in gone.items():
            del self.running[slot]
            log.warning("worker %d (pid %d) exited with %s", slot, process.pid,
                        process.returncode)
        return [p.returncode for p in gone.values() if p.returncode is not None]

    async def _drain(self, slot: int, process: asyncio.subprocess.Process) -> None:
        log.info("draining worker %d (pid %d)", slot, process.pid)
        _signal(process, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), self.grace_s + KILL_MARGIN_S)
        except TimeoutError:
            log.warning("worker %d did not exit within its grace; killing it", slot)
            _signal(process, signal.SIGKILL)
            await process.wait()
        log.info("worker %d (pid %d) exited with %s", slot, process.pid, process.returncode)

    async def close(self) -> None:
        """Drain every worker and wait for all of them."""
        while self.running:
            self.stop_one()
        if self._draining:
            await asyncio.gather(*self._draining, return_exceptions=True)


def _signal(process: asyncio.subprocess.Process, sig: int) -> None:
    if process.returncode is None:
        try:
            os.kill(process.pid, sig)
        except ProcessLookupError:
            pass
