"""Accept a recorded batch's lines as tasks, through `accept_task` like any task.

A line is marked accepted only after `accept_task` returned (the task stored and its
publish confirmed), so an ingest that dies midway leaves the rest unaccepted; whichever
ingest process next leases the batch accepts them. A line accepted twice is one task:
its id is fixed by the batch and line (`batch_requests.task_id`), and `accept_task`
answers a known id without publishing it again.

Each ingest process runs one `BatchAcceptor` thread, started on demand (a new batch, a
retrieve of a batch nobody is accepting, or pending batches found at start-up) and ending
once it has found nothing to do for `idle_s`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from services.common.amqp import PublishFailed
from services.ingest import batch_store
from services.ingest.accept import StoreUnavailable, TaskPublisher, accept_task
from services.ingest.sql_store import SqlTaskStore

log = logging.getLogger(__name__)

CHUNK = 50  # lines accepted between two lease renewals (and cancel checks)
LEASE_S = 30.0


def accept_lines(engine: Engine, publisher: TaskPublisher, batch_id: str,
                 clock: Callable[[], float] = time.time) -> bool:
    """Lease a validating batch and accept its unaccepted lines; False if another process
    holds it or it is no longer validating (cancelled). Raises PublishFailed or
    StoreUnavailable when a line could not be accepted: the lease then runs out and the
    batch is taken up again."""
    if not batch_store.lease(engine, batch_id, clock(), clock() + LEASE_S):
        return False
    store = SqlTaskStore(engine)
    while True:
        chunk = batch_store.unaccepted(engine, batch_id, CHUNK)
        if not chunk:
            batch_store.release(engine, batch_id, in_progress_at=clock())
            return True
        for _, task in chunk:
            accept_task(task.stamped(), store, publisher, clock())
        batch_store.mark_accepted(engine, batch_id, [number for number, _ in chunk])
        if not batch_store.lease(engine, batch_id, clock(), clock() + LEASE_S, held=True):
            batch_store.release(engine, batch_id)  # cancelled: the finalizer may go on
            return False


class BatchAcceptor:
    """One thread per ingest process that accepts pending batches' lines."""

    def __init__(self, engine: Engine, publisher: TaskPublisher, interval_s: float = 1.0,
                 idle_s: float = 60.0) -> None:
        self._engine = engine
        self._publisher = publisher
        self._interval_s = interval_s
        self._idle_s = idle_s
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        """Look for pending batches now, starting the thread if it is not running."""
        with self._lock:
            self._wake.set()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="agentq-batch-accept",
                                                daemon=True)
                self._thread.start()

    def wake_if_pending(self) -> None:
        """Start the thread when batches wait for acceptance (ingest's start-up)."""
        try:
            pending = batch_store.pending_batches(self._engine, time.time(), limit=1)
        except SQLAlchemyError as exc:
            log.warning("cannot look for pending batches: %r", exc)
            pending = ["unknown"]  # look again from the thread
        if pending:
            self.wake()

    def run_once(self) -> int:
        """Accept the lines of every pending batch; return how many batches were done."""
        done = 0
        for batch_id in batch_store.pending_batches(self._engine, time.time()):
            try:
                done += accept_lines(self._engine, self._publisher, batch_id)
            except (PublishFailed, StoreUnavailable) as exc:
                log.warning("batch %s: cannot accept its lines yet: %r", batch_id, exc)
        return done

    def _run(self) -> None:
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < self._idle_s:
            self._wake.clear()
            try:
                if self.run_once():
                    idle_since = time.monotonic()
            except SQLAlchemyError as exc:
                log.warning("batch acceptance: the store did not answer: %r", exc)
            self._wake.wait(self._interval_s)
