"""Run a blocking embed function off the event loop, coalescing concurrent calls into batches.

A model run costs a fixed overhead plus a little per text, so the lookups of a burst (one
per task the router is holding) share one run: callers queue their texts, one drain task
takes everything queued (up to `max_batch` texts), runs the model in a worker thread, and
hands each caller its own rows. The event loop never waits on the model.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import numpy as np

EmbedNow = Callable[[Sequence[str]], np.ndarray]


class EmbedBatcher:
    """Coalesce `embed` calls into batched `embed_now` runs in a thread."""

    def __init__(self, embed_now: EmbedNow, max_batch: int = 64) -> None:
        self._embed_now = embed_now
        self._max_batch = max_batch
        self._queue: list[tuple[list[str], asyncio.Future[np.ndarray]]] = []
        self._drain: asyncio.Task[None] | None = None

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._queue.append((list(texts), future))
        if self._drain is None or self._drain.done():
            self._drain = asyncio.create_task(self._run())
        return await future

    async def _run(self) -> None:
        await asyncio.sleep(0)  # let the callers of this loop turn queue their texts first
        while self._queue:
            batch: list[tuple[list[str], asyncio.Future[np.ndarray]]] = []
            size = 0
            while self._queue and (not batch or size + len(self._queue[0][0])
                                   <= self._max_batch):
                item = self._queue.pop(0)
                batch.append(item)
                size += len(item[0])
            texts = [text for item_texts, _ in batch for text in item_texts]
            try:
                rows = await asyncio.to_thread(self._embed_now, texts)
            except Exception as exc:  # each waiting caller gets the model's error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for item_texts, future in batch:
                if not future.done():
                    future.set_result(rows[start:start + len(item_texts)])
                start += len(item_texts)
