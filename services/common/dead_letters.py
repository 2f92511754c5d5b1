"""Read and replay the dead-letter queue (`<ns>.dead`): `agentq dlq` and the dashboard.

A task lands in `dead` when a worker gives up on it (the reason in `x-agentq-error`) or when
the broker dead-letters it (a crash loop past the delivery limit: the reason in `x-death`).
Reading holds every letter unacknowledged and lets the channel's close put them back, so
`list` and `show` change nothing. A replay sends the task back to the router through
`<ns>.tasks`, as ingest does, and acknowledges its letter only after the broker confirmed
the task: a letter is never lost, at worst sent twice by a replay that died in between.

A replay is idempotent per task id: before publishing, the task's row is reopened
("queued", error `replayed`, naming the letter) only if it is not already waiting on an
earlier replay; another letter of the same task finds it so and is dropped as a duplicate,
the same letter again (its replay died before acknowledging it) is sent again. A task that
succeeded meanwhile is not run again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import pika
import pika.exceptions
from pydantic import ValidationError
from sqlalchemy import Engine

from services.common.models import Task
from services.common.store import reopen_for_replay
from services.common.topology import ERROR_HEADER, SUBMIT_ROUTING_KEY, Names

READ_AT_MOST = 10_000
GIVE_BACK_WAIT_S = 5.0
REPLAY_HEADER = "x-agentq-replayed"


@dataclass(frozen=True)
class DeadLetter:
    """One message of the dead-letter queue, as read."""

    position: int
    task: Task | None  # None: the body is not a task (kept, never replayed)
    reason: str
    dead_at: float | None
    routing_key: str
    headers: dict[str, Any] = field(default_factory=dict)
    body: bytes = b""

    @property
    def tenant(self) -> str:
        return self.task.tenant if self.task else "?"

    @property
    def task_id(self) -> str:
        return self.task.id if self.task else "?"

    @property
    def fingerprint(self) -> str:
        """Names this letter (not its task): a replay that died is told from a duplicate."""
        digest = hashlib.sha256(self.body)
        digest.update(f"\0{self.reason}\0{self.dead_at}\0{self.routing_key}".encode())
        return digest.hexdigest()[:16]

    def summary(self) -> dict[str, Any]:
        return {"position": self.position, "task_id": self.task_id, "tenant": self.tenant,
                "kind": self.task.kind if self.task else None, "reason": self.reason,
                "dead_at": self.dead_at, "routing_key": self.routing_key}


@dataclass(frozen=True)
class Filter:
    """Which letters a command is about: reason (substring, any case), tenant, task id."""

    reason: str | None = None
    tenant: str | None = None
    task_id: str | None = None

    def matches(self, letter: DeadLetter) -> bool:
        if self.reason and self.reason.lower() not in letter.reason.lower():
            return False
        if self.tenant is not None and letter.tenant != self.tenant:
            return False
        return self.task_id is None or letter.task_id == self.task_id


def reason_of(headers: dict[str, Any]) -> str:
    """Say why a message is dead: agentq's own reason, else the broker's x-death entry."""
    own = headers.get(ERROR_HEADER)
    if own:
        return _text(own)
    deaths = headers.get("x-death") or []
    if deaths and isinstance(deaths[0], dict):
        first = deaths[0]
        return f"{_text(first.get('reason', 'dead'))} in {_text(first.get('queue', '?'))}"
    return "dead-lettered (no reason given)"


def dead_at(headers: dict[str, Any], timestamp: int | None) -> float | None:
    deaths = headers.get("x-death") or []
    if deaths and isinstance(deaths[0], dict):
        when = deaths[0].get("time")
        if isinstance(when, dt.datetime):
            return when.timestamp()
    return float(timestamp) if timestamp else None


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def parse(position: int, body: bytes, properties: pika.BasicProperties,
          routing_key: str) -> DeadLetter:
    headers = dict(properties.headers or {})
    try:
        task: Task | None = Task.model_validate_json(body)
    except ValidationError:
        task = None
    return DeadLetter(position, task, reason_of(headers),
                      dead_at(headers, properties.timestamp), routing_key, headers, body)


Outcome = Literal["replayed", "duplicate", "succeeded", "not a task"]


@dataclass
class ReplayReport:
    replayed: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)  # dropped: a replay is pending
    succeeded: list[str] = field(default_factory=list)  # dropped: finished meanwhile
    unreadable: int = 0  # kept: not a task
    unmatched: int = 0  # kept: outside the filter

    def as_dict(self) -> dict[str, Any]:
        return {"replayed": len(self.replayed), "duplicates": len(self.duplicates),
                "already_succeeded": len(self.succeeded), "unreadable": self.unreadable,
                "not_matching": self.unmatched, "task_ids": self.replayed}


class DeadLetterQueue:
    """The dead letters of one namespace, on a blocking pika connection of its own."""

    def __init__(self, amqp_url: str, names: Names) -> None:
        self.amqp_url = amqp_url
        self.names = names

    @contextmanager
    def _in_hand(self, at_most: int
              ) -> Iterator[tuple[Any, list[tuple[int, DeadLetter]], list[int]]]:
        """Yield (channel, [(delivery tag, letter)], acked) with every letter unacknowledged;
        the caller appends to `acked` the tags it acknowledged, and the rest go back."""
        params = pika.URLParameters(self.amqp_url)
        params.client_properties = {"connection_name": f"{self.names.ns}.dlq"}
        connection = pika.BlockingConnection(params)
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            in_hand: list[tuple[int, DeadLetter]] = []
            while len(in_hand) < at_most:
                method, properties, body = channel.basic_get(self.names.dead, auto_ack=False)
                if method is None:
                    break
                in_hand.append((method.delivery_tag,
                                parse(len(in_hand), body, properties, method.routing_key)))
            acked: list[int] = []
            yield channel, in_hand, acked
            if connection.is_open:
                self._give_back(channel, len(in_hand) - len(acked))
        finally:
            if connection.is_open:
                connection.close()

    def _give_back(self, channel: Any, count: int) -> None:
        """Return the letters not acknowledged and wait (briefly) until the queue counts them
        again: a quorum queue takes returns asynchronously, and a read right after this one
        (`agentq dlq list`, then `replay`) must see every letter."""
        def ready() -> int:
            return int(channel.queue_declare(self.names.dead, passive=True).method.message_count)

        expected = ready() + count  # those not read (past at_most) and those given back
        channel.basic_recover(requeue=True)
        deadline = time.monotonic() + GIVE_BACK_WAIT_S
        while ready() < expected and time.monotonic() < deadline:
            time.sleep(0.01)

    def list(self, where: Filter = Filter(), at_most: int = READ_AT_MOST) -> list[DeadLetter]:
        """Return the letters that match, leaving the queue as it was."""
        with self._in_hand(at_most) as (_, in_hand, _acked):
            return [letter for _, letter in in_hand if where.matches(letter)]

    def replay(self, engine: Engine, where: Filter = Filter(),
               at_most: int = READ_AT_MOST) -> ReplayReport:
        """Send every matching task back to the router; see the module docstring."""
        report = ReplayReport()
        with self._in_hand(at_most) as (channel, in_hand, acked):
            for tag, letter in in_hand:
                if letter.task is None:
                    report.unreadable += 1
                    continue
                if not where.matches(letter):
                    report.unmatched += 1
                    continue
                outcome = self._replay_one(channel, engine, letter.task, letter.fingerprint)
                channel.basic_ack(tag)
                acked.append(tag)
                {"replayed": report.replayed, "duplicate": report.duplicates,
                 "succeeded": report.succeeded}[outcome].append(letter.task_id)
        return report

    def _replay_one(self, channel: Any, engine: Engine, task: Task,
                    fingerprint: str) -> Outcome:
        state = reopen_for_replay(engine, task, fingerprint)
        if state == "duplicate":
            return "duplicate"
        if state == "succeeded":
            return "succeeded"
        properties = pika.BasicProperties(content_type="application/json",
                                          delivery_mode=pika.DeliveryMode.Persistent,
                                          priority=task.priority,
                                          headers={REPLAY_HEADER: 1})
        channel.basic_publish(self.names.tasks, SUBMIT_ROUTING_KEY,
                              task.model_dump_json().encode(), properties, mandatory=True)
        return "replayed"


def letter_detail(letter: DeadLetter) -> dict[str, Any]:
    """Everything about one letter, for `agentq dlq show` (headers made JSON-safe)."""
    return {**letter.summary(),
            "task": json.loads(letter.task.model_dump_json()) if letter.task else None,
            "body": None if letter.task else letter.body[:2000].decode(errors="replace"),
            "headers": _json_safe(letter.headers)}


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [_json_safe(v) for v in value]
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return value
