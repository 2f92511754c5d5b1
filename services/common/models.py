"""The messages on the wire: pydantic models for Task, Result and Event (the public contract)."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.common.answer_checks import compile_pattern, schema_ref_problem
from services.common.deadlines import parse_deadline

Tier = Literal["cheap", "standard", "premium"]
TIERS: tuple[Tier, ...] = ("cheap", "standard", "premium")
Role = Literal["system", "user", "assistant", "tool", "developer"]

MAX_MESSAGES = 1000
MAX_ID_LENGTH = 64


class Message(BaseModel):
    """One chat message in OpenAI's format."""

    model_config = ConfigDict(extra="forbid")

    role: Role
    content: str


class Validator(BaseModel):
    """A check the answer must pass, else the task escalates to the next tier."""

    model_config = ConfigDict(extra="forbid")

    json_schema: dict[str, Any] | None = None
    regex: str | None = Field(default=None, max_length=2000)
    labels: list[str] | None = None

    @field_validator("regex")
    @classmethod
    def _regex_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            compile_pattern(value)  # the engine the worker checks answers with
        return value

    @field_validator("json_schema")
    @classmethod
    def _schema_is_valid(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            import jsonschema  # only tasks that carry a schema pay for the import

            try:
                jsonschema.validators.validator_for(value).check_schema(value)
            except jsonschema.SchemaError as exc:
                raise ValueError(f"json_schema is not a valid JSON Schema: {exc.message}") \
                    from None
            # Refused here, not found out after a paid call (or fetched from a URL).
            problem = schema_ref_problem(value)
            if problem is not None:
                raise ValueError(f"json_schema: {problem}")
        return value


class Task(BaseModel):
    """A unit of LLM work submitted by a client (HTTP body or AMQP message)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(default_factory=lambda: str(uuid.uuid4()), min_length=1, max_length=64)
    tenant: str = Field(default="default", min_length=1, max_length=64, pattern=r"^[\w.\-]+$")
    kind: str = Field(default="chat", min_length=1, max_length=64, pattern=r"^[\w.\-]+$")
    messages: list[Message] = Field(default_factory=list, max_length=MAX_MESSAGES)
    prompt: str | None = Field(default=None, exclude=True)
    tier: Tier | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=200_000)
    # agentq sends temperature 0 unless told otherwise, so repeated tasks are deterministic
    # and cacheable; agents that want variety say so.
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    cache: Literal["auto", "off", "on"] = "auto"
    priority: int = Field(default=0, ge=0, le=9)
    metadata: dict[str, Any] = Field(default_factory=dict)
    validator: Validator | None = None
    # An ISO-8601 time with a zone or a duration from acceptance ("24h"); kept as given.
    deadline: str | None = Field(default=None, max_length=64)
    # May wait for a provider's Batch API (half price) while the deadline leaves room.
    deferrable: bool = False
    # Set by ingest, not by clients: where to send the Result too, and when it was accepted.
    reply_to: str | None = Field(default=None, max_length=255)
    submitted_at: float | None = None
    # `deadline` resolved once at acceptance (epoch seconds), so a redelivered message or a
    # replay does not count a duration from a later moment and push its own deadline back.
    deadline_at: float | None = None

    @field_validator("id")
    @classmethod
    def _id_is_printable(cls, value: str) -> str:
        if not all(c.isalnum() or c in "-_.:" for c in value):
            raise ValueError("id may hold only letters, digits and - _ . :")
        if not value.strip("."):
            # `.` and `..` are path segments: GET /v1/tasks/<id> could never read them back.
            raise ValueError("id must hold a letter or digit, not only dots")
        return value

    @field_validator("deadline")
    @classmethod
    def _deadline_parses(cls, value: str | None) -> str | None:
        if value is not None:
            parse_deadline(value, datetime.now(UTC))  # ValueError -> 400 naming `deadline`
        return value

    @field_validator("tenant", "kind")
    @classmethod
    def _fits_a_routing_key(cls, value: str) -> str:
        # They go into AMQP routing keys (`<tenant>.<status>`, at most 255 bytes): 64
        # characters of four-byte letters would not fit, so the limit counts UTF-8 bytes.
        if len(value.encode("utf-8")) > MAX_ID_LENGTH:
            raise ValueError(f"must be at most {MAX_ID_LENGTH} bytes in UTF-8")
        return value

    @model_validator(mode="after")
    def _prompt_becomes_messages(self) -> Task:
        if self.prompt is not None:
            if self.messages:
                raise ValueError("give either messages or prompt, not both")
            self.messages = [Message(role="user", content=self.prompt)]
            self.prompt = None
        if not self.messages:
            raise ValueError("messages (or prompt) is required")
        return self

    def stamped(self, reply_to: str | None = None) -> Task:
        """Return the task as ingest accepts it: timestamped now, with the AMQP reply queue.

        What a client put in these two fields is overwritten: it could fake queue times or
        send results to any queue.
        """
        now = time.time()
        deadline_at = None
        if self.deadline is not None:
            deadline_at = parse_deadline(self.deadline, _aware(now)).timestamp()
        return self.model_copy(update={"submitted_at": now, "reply_to": reply_to,
                                       "deadline_at": deadline_at})

    def deadline_moment(self) -> datetime | None:
        """Return the task's deadline as a zone-aware time, or None when it has none.

        A task that did not come through ingest (a test, an old message) has no
        `deadline_at`: its duration counts from `submitted_at`, else from now.
        """
        if self.deadline_at is not None:
            return _aware(self.deadline_at)
        if self.deadline is None:
            return None
        return parse_deadline(self.deadline, _aware(self.submitted_at or time.time()))


def _aware(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Latency(BaseModel):
    queue: float = 0.0
    llm: float = 0.0  # the provider calls alone
    limiter: float | None = None  # waiting for provider capacity (absent in older results)
    total: float = 0.0


class ErrorInfo(BaseModel):
    code: str
    message: str


class CallCost(BaseModel):
    """One provider call made for a task (a cascade makes several)."""

    tier: str
    model: str
    usage: Usage = Field(default_factory=Usage)
    cost_usd: float = 0.0
    valid: bool = True  # False: the answer failed the task's validator and was escalated


class Result(BaseModel):
    """What became of a task: its answer, model, tokens, cost and timings."""

    task_id: str = Field(max_length=64)
    tenant: str = Field(max_length=64)
    status: Literal["succeeded", "failed"]
    output: str = ""
    model: str = ""
    tier: str = ""
    usage: Usage = Field(default_factory=Usage)
    cost_usd: float = 0.0
    cost_saved_usd: float = 0.0
    cache: Literal["miss", "exact", "semantic"] = "miss"
    attempts: int = 0
    latency_ms: Latency = Field(default_factory=Latency)
    error: ErrorInfo | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    kind: str = Field(default="", max_length=64)
    route_reason: str = ""
    finished_at: float = Field(default_factory=time.time)
    # Every provider call behind this answer, when there was more than one (a cascade).
    calls: list[CallCost] = Field(default_factory=list)
    cached_from: str | None = None  # a cache hit: the task whose answer this is
    batch_id: str | None = None  # answered through this provider batch (at the batch price)


class Event(BaseModel):
    """A telemetry record for the dashboard (`agentq.events`, routing key = `type`)."""

    type: str
    ts: float = Field(default_factory=time.time)
    service: str = ""
    tenant: str | None = None
    task_id: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)
