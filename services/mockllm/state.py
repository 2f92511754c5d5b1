"""Hold what a running provider changes: its counts, settings, limiter and randomness."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web

from services.mockllm.batch_store import BatchStore
from services.mockllm.files import FileStore
from services.mockllm.ratelimit import RateLimiter
from services.mockllm.settings import ControlUpdate, FailNext, MockSettings


@dataclass(slots=True)
class Counters:
    """Count chat outcomes and billed tokens."""

    requests: int = 0
    completed: int = 0
    rate_limited: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, other: Counters) -> None:
        """Add another set of counts to this one."""
        self.requests += other.requests
        self.completed += other.completed
        self.rate_limited += other.rate_limited
        self.errors += other.errors
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens


@dataclass(slots=True)
class Stats:
    """Count what the provider did, in total and per model."""

    total: Counters = field(default_factory=Counters)
    by_model: dict[str, Counters] = field(default_factory=dict)
    in_flight: int = 0
    embeddings: int = 0
    batches: int = 0
    # Lines submitted in batches per custom_id, across all batches: a count above one
    # proves a client submitted the same task twice.
    batch_lines: dict[str, int] = field(default_factory=dict)

    def model(self, name: str) -> Counters:
        """Return the counters of one model, creating them on first use."""
        counters = self.by_model.get(name)
        if counters is None:
            counters = self.by_model[name] = Counters()
        return counters

    def record(self, model: str | None, outcome: Counters) -> None:
        """Add an outcome to the totals and, when the model is known, to its counters."""
        self.total.add(outcome)
        if model is not None:
            self.model(model).add(outcome)

    def record_batch(self, custom_ids: list[str]) -> None:
        """Count a created batch and each of its lines by custom_id."""
        self.batches += 1
        for custom_id in custom_ids:
            self.batch_lines[custom_id] = self.batch_lines.get(custom_id, 0) + 1

    def to_json(self) -> dict[str, Any]:
        """Return the GET /stats document."""
        by_model = {name: asdict(counters) for name, counters in self.by_model.items()}
        return {
            **asdict(self.total),
            "in_flight": self.in_flight,
            "embeddings": self.embeddings,
            "batches": self.batches,
            "batch_lines": dict(self.batch_lines),
            "by_model": by_model,
        }


@dataclass(slots=True)
class MockState:
    """Hold everything a running provider changes: settings, limiter, randomness, counts."""

    settings: MockSettings
    limiter: RateLimiter
    rng: random.Random
    stats: Stats = field(default_factory=Stats)
    fail_next: FailNext = field(default_factory=lambda: FailNext(count=0))
    clock: Callable[[], float] = time.monotonic
    # The last /v1 request as it arrived, for GET /_agentq/last-request: lets a test see
    # which headers, query parameters and body fields a client really sent.
    last_request: dict[str, Any] | None = None
    files: FileStore = field(default_factory=FileStore)
    # Batches run on the wall clock: their created_at and *_at times are Unix times.
    batches: BatchStore = field(init=False)

    def __post_init__(self) -> None:
        self.batches = BatchStore(self.files, time.time)

    @classmethod
    def create(cls, settings: MockSettings) -> MockState:
        """Build the state a fresh server starts with."""
        limiter = RateLimiter(settings.rpm, settings.tpm, time.monotonic())
        return cls(settings=settings, limiter=limiter, rng=random.Random(settings.seed))

    def apply(self, update: ControlUpdate) -> None:
        """Apply a POST /control update."""
        changes = update.setting_changes()
        self.settings = self.settings.model_copy(update=changes)
        if "rpm" in changes or "tpm" in changes:
            # A changed limit starts with its full allowance, as a new OpenAI tier does.
            self.limiter = RateLimiter(self.settings.rpm, self.settings.tpm, self.clock())
        if "seed" in changes:
            self.rng.seed(self.settings.seed)
        if update.fail_next is not None:
            self.fail_next = update.fail_next

    def take_forced_failure(self) -> FailNext | None:
        """Use up one of the failures ordered by /control, if any are left."""
        if self.fail_next.count <= 0:
            return None
        self.fail_next = self.fail_next.model_copy(update={"count": self.fail_next.count - 1})
        return self.fail_next

    def control_json(self) -> dict[str, Any]:
        """Return the /control document: current settings and pending failures."""
        return {**self.settings.model_dump(), "fail_next": self.fail_next.model_dump()}


STATE = web.AppKey("mockllm_state", MockState)
