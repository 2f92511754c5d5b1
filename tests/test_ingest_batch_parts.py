"""agentq's own Batch API, its parts: line checks, line -> task, status and records (pure), and
the acceptance of a batch's lines against the real store and broker, through a failure."""

from __future__ import annotations

import io
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest

from services.common.amqp import PublishFailed
from services.common.batch_format import BatchFileError
from services.common.config import load_config
from services.common.models import Latency, Task, Usage
from services.common.results import answered, failed
from services.common.settings import Settings
from services.common.store import get_task, insert_task, make_engine, record_results
from services.common.topology import Names
from services.ingest import batch_accept, batch_store
from services.ingest.app import create_app
from services.ingest.batch_requests import BatchSpec, batch_tasks, check_input, line_task
from services.ingest.batch_results import (
    Progress,
    current_status,
    final_status,
    is_expired,
    is_output,
    line_record,
)
from services.ingest.batch_service import BatchService
from services.ingest.publisher import Publisher
from services.ingest.routes import EXTENSION

if TYPE_CHECKING:
    from conftest import Rabbit


def line(custom_id: str, **changes: Any) -> dict[str, Any]:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": body, **changes}


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(item) + "\n" for item in lines).encode()


def with_body(custom_id: str, **body: Any) -> dict[str, Any]:
    return line(custom_id, body={**line(custom_id)["body"], **body})


# --- line checks and line -> task ------------------------------------------------------------

@pytest.mark.parametrize(("bad", "param"), [
    (line("b", method="GET"), "method"),
    (line("b", url="/v1/embeddings"), "url"),
    (line("b", url="/v1/completions"), "url"),
    ({"custom_id": "b", "method": "POST", "url": "/v1/chat/completions"}, "body"),
    (line(""), "custom_id"),
    (line("a"), "custom_id"),  # a repeat of line 1's custom_id
    (with_body("b", tools=[]), "body.tools"),
    (with_body("b", n=2), "body.n"),
    (with_body("b", model=7), "body.model"),
    (with_body("b", messages=[]), "body.messages"),
    (with_body("b", messages=[{"role": "robot", "content": "x"}]), "body.messages.0.role"),
    (with_body("b", messages=[{"role": "user", "content": [{"type": "image_url"}]}]),
     "body.messages.0.content"),
    (with_body("b", temperature=5), "body.temperature"),
    (with_body("b", max_tokens=0), "body.max_tokens"),
])
def test_a_bad_line_is_refused_naming_its_line_and_param(bad: dict[str, Any],
                                                         param: str) -> None:
    with pytest.raises(BatchFileError) as caught:
        check_input(jsonl([line("a"), bad]))
    assert caught.value.param == param
    assert caught.value.message.startswith("Line 2: ")


def test_line_numbers_count_blank_lines_and_files_must_hold_requests() -> None:
    with pytest.raises(BatchFileError, match=r"^Line 3: ") as caught:
        check_input(jsonl([line("a")]) + b"\n" + jsonl([line("b", method="PUT")]))
    assert caught.value.param == "method"
    for content, code in ((b"", "empty_file"), (b"\xff\xfe", None), (b"[1]\n", "invalid_json")):
        with pytest.raises(BatchFileError) as refused:
            check_input(content)
        assert refused.value.param == "file" and refused.value.code == code
    with pytest.raises(BatchFileError, match="at most 2"):
        check_input(jsonl([line("a"), line("b"), line("c")]), max_lines=2)


def test_a_line_becomes_a_deferrable_task_with_its_custom_id_and_the_window_deadline() -> None:
    created = datetime(2026, 12, 3, 12, 0, tzinfo=UTC).timestamp()
    spec = BatchSpec("batch_abc", "acme", "classify", created)
    content = jsonl([
        with_body("first", model="cheap", max_completion_tokens=20, temperature=0.7),
        with_body("second", messages=[{"role": "user", "content": [
            {"type": "text", "text": "one"}, {"type": "text", "text": "two"}]}]),
    ])
    (first_line, first), (_, second) = batch_tasks(content, spec)
    assert first_line.custom_id == "first"
    assert (first.id, first.tenant, first.kind) == ("batch_abc-0", "acme", "classify")
    assert first.metadata == {"batch": "batch_abc", "custom_id": "first"}
    assert first.deferrable and first.deadline == "2026-12-04T12:00:00+00:00"
    assert (first.tier, first.max_tokens, first.temperature) == ("cheap", 20, 0.7)
    # A model name that is no tier lets the router choose; agentq's temperature default holds.
    assert (second.id, second.tier, second.temperature) == ("batch_abc-1", None, 0.0)
    assert second.messages[0].content == "one\ntwo"
    # The stable id makes a line accepted twice one task.
    assert line_task(first_line, 0, spec) == first


# --- status and records ------------------------------------------------------------------------

@pytest.mark.parametrize(("stored", "progress", "accepting", "shown"), [
    ("validating", Progress(10, 4, 4, 0), False, "validating"),
    ("validating", Progress(10, 10, 3, 1), False, "in_progress"),
    ("in_progress", Progress(10, 10, 3, 1), False, "in_progress"),
    ("in_progress", Progress(10, 10, 9, 1), False, "finalizing"),
    ("cancelling", Progress(10, 4, 2, 0), False, "cancelling"),
    ("cancelling", Progress(10, 4, 3, 1), True, "cancelling"),  # a line may still be accepted
    ("cancelling", Progress(10, 4, 3, 1), False, "finalizing"),
    ("completed", Progress(10, 10, 10, 0), False, "completed"),
    ("cancelled", Progress(10, 4, 4, 0), False, "cancelled"),
])
def test_status_follows_the_lines(stored: str, progress: Progress, accepting: bool,
                                  shown: str) -> None:
    assert current_status(stored, progress, accepting) == shown


def test_records_answer_like_openai_batch_output() -> None:
    result = {"output": "praise", "model": "gpt-4o-mini", "finished_at": 1700000000.5,
              "usage": {"prompt_tokens": 12, "completion_tokens": 3}}
    ok = line_record("c1", "b-0", "succeeded", result, "completed")
    assert is_output(ok) and ok["custom_id"] == "c1" and ok["error"] is None
    body = ok["response"]["body"]
    assert body["object"] == "chat.completion" and body["created"] == 1700000000
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "praise",
                                             "refusal": None}
    assert body["usage"] == {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
    assert ok == line_record("c1", "b-0", "succeeded", result, "completed")  # ids are stable
    failed = line_record("c2", "b-1", "failed",
                         {"error": {"code": "rate_limited", "message": "waited too long"}},
                         "completed")
    assert not is_output(failed) and failed["response"]["status_code"] == 429
    assert failed["response"]["body"]["error"]["code"] == "rate_limited"
    never = line_record("c3", "b-2", None, None, "cancelled")
    assert never["response"] is None and never["error"]["code"] == "batch_cancelled"


@pytest.mark.parametrize(("stored", "progress", "accepting", "shown", "end"), [
    ("validating", Progress(10, 4, 2, 1), True, "finalizing", "expired"),  # lines never run
    ("in_progress", Progress(10, 10, 7, 1), False, "finalizing", "expired"),
    ("in_progress", Progress(10, 10, 9, 1), False, "finalizing", "completed"),  # all answered
    ("cancelling", Progress(10, 4, 2, 0), False, "cancelling", "cancelled"),  # asked before
    ("cancelling", Progress(10, 4, 3, 1), False, "finalizing", "cancelled"),
    ("completed", Progress(10, 10, 10, 0), False, "completed", "completed"),
])
def test_a_batch_past_its_window_ends_expired_unless_every_line_was_answered(
        stored: str, progress: Progress, accepting: bool, shown: str, end: str) -> None:
    assert current_status(stored, progress, accepting, expired=True) == shown
    if shown == "finalizing":
        assert final_status(stored, progress, expired=True) == end
    assert final_status("in_progress", Progress(10, 10, 7, 1)) == "completed"  # in its window
    assert is_expired(100.0, 100.0) and not is_expired(100.0, 99.9)


def record_batch(engine: Any, batch_id: str, count: int, created: float
                 ) -> tuple[BatchSpec, list[tuple[Any, Task]]]:
    """Record a validating batch of `count` lines of tenant acme, as `POST /v1/batches` does."""
    spec = BatchSpec(batch_id, "acme", "chat", created)
    pairs = batch_tasks(jsonl([line(f"c{i}") for i in range(count)]), spec)
    batch_store.insert_batch(engine, {
        "id": spec.batch_id, "owner": "acme", "tenant": "acme", "input_file_id": "file-x",
        "endpoint": "/v1/chat/completions", "completion_window": "24h",
        "status": "validating", "metadata_json": None, "total": count, "created_at": created,
        "expires_at": created + 86400}, [(ln.custom_id, task) for ln, task in pairs])
    return spec, pairs


class Waker:
    """Stands for the acceptor: counts the times a view asked it to take a batch up."""

    woken = 0

    def wake(self) -> None:
        self.woken += 1


def test_an_expired_batch_gives_its_unanswered_lines_batch_expired(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    batch_store.create_batch_tables(engine)
    created = time.time() - 2 * 86400  # the window's deadline is past: accepted as such
    spec, pairs = record_batch(engine, "batch_old", 4, created)
    tasks = [task.stamped() for _, task in pairs]
    for task in tasks[:3]:  # line 3 never accepted; line 2 accepted and still queued
        insert_task(engine, task)
    batch_store.mark_accepted(engine, spec.batch_id, [0, 1, 2])
    latency = Latency(queue=1, llm=1, total=2)
    record_results(engine, [
        answered(tasks[0], tier="cheap", route_reason="r", latency=latency, output="yes",
                 model="gpt-4o-mini", usage=Usage(prompt_tokens=3, completion_tokens=1),
                 cost_usd=0.0, config=load_config(None), attempts=1),
        failed(tasks[1], tier="cheap", route_reason="r", latency=latency,
               code="rate_limited", message="waited too long")])
    clock = [created + 86399.0]
    acceptor = Waker()
    service = BatchService(engine, cast(batch_accept.BatchAcceptor, acceptor), 1 << 20,
                           clock=lambda: clock[0])
    try:
        within = service.view("acme", spec.batch_id)
        assert within is not None and within["status"] == "validating"
        assert acceptor.woken == 1  # nobody accepting its last line: taken up
        clock[0] = created + 86400.0
        ended = service.view("acme", spec.batch_id)
        assert ended is not None and ended["status"] == "expired"
        assert acceptor.woken == 1  # past its window: no more lines accepted
        assert ended["expired_at"] == int(created + 86400) and ended["completed_at"] is None
        assert ended["request_counts"] == {"total": 4, "completed": 1, "failed": 3}
        output = service.file("acme", ended["output_file_id"], content=True)
        errors = service.file("acme", ended["error_file_id"], content=True)
        assert output is not None and errors is not None
        assert [json.loads(x)["custom_id"] for x in output["content"].splitlines()] == ["c0"]
        codes = {r["custom_id"]: (r["error"] or r["response"]["body"]["error"])["code"]
                 for r in map(json.loads, errors["content"].splitlines())}
        assert codes == {"c1": "rate_limited", "c2": "batch_expired", "c3": "batch_expired"}
        # Ended once: a later look shows the same, and a task finishing late changes nothing.
        record_results(engine, [failed(tasks[2], tier="cheap", route_reason="r",
                                       latency=latency, code="x", message="late")])
        assert service.view("acme", spec.batch_id) == ended
    finally:
        engine.dispose()


# --- acceptance through a failure, against the real store and broker ---------------------------

class FailingAfter:
    """A real publisher that stops confirming after `limit` tasks, as a broker outage would."""

    def __init__(self, inner: Publisher, limit: int) -> None:
        self.inner, self.left = inner, limit

    def publish_task(self, task: Task) -> None:
        if self.left == 0:
            raise PublishFailed("the broker went away")
        self.left -= 1
        self.inner.publish_task(task)


def test_a_batch_interrupted_midway_is_accepted_in_full_once(settings: Settings, names: Names,
                                                             rabbit: Rabbit) -> None:
    engine = make_engine(settings.database_url)
    batch_store.create_batch_tables(engine)
    publisher = Publisher(settings.amqp_url, names)
    try:
        now = time.time()
        spec, _ = record_batch(engine, "batch_cut", 120, now)
        queue = names.tasks
        with pytest.raises(PublishFailed):
            batch_accept.accept_lines(engine, FailingAfter(publisher, 70), spec.batch_id)
        assert batch_store.progress(engine, spec.batch_id).accepted == 50  # one chunk marked
        # Another ingest cannot take it while the dead one's lease runs...
        assert not batch_accept.accept_lines(engine, publisher, spec.batch_id)
        # ...and takes it up once the lease ran out.
        later = now + batch_accept.LEASE_S + 1
        assert batch_accept.accept_lines(engine, publisher, spec.batch_id, clock=lambda: later)
        assert batch_store.progress(engine, spec.batch_id).accepted == 120
        row = batch_store.get_batch(engine, spec.batch_id, "acme")
        assert row is not None and row["status"] == "in_progress"
        assert all(get_task(engine, "acme", f"batch_cut-{i}") is not None for i in range(120))
        # Lines 50..69 were queued before the failure: not queued a second time.
        assert rabbit.count(queue) == 120
        assert batch_store.get_batch(engine, spec.batch_id, "beta") is None
    finally:
        publisher.close()
        engine.dispose()


def test_a_batch_file_may_exceed_a_task_body_but_not_its_own_limit(settings: Settings) -> None:
    limit = 3 * settings.max_body_bytes
    app = create_app(settings.model_copy(update={"batch_file_max_bytes": limit}))
    try:
        http = app.test_client()
        filler = "x" * 1000
        content = jsonl([line(f"c{i}", body={"model": "m", "messages": [
            {"role": "user", "content": filler}]}) for i in range(2 * settings.max_body_bytes
                                                              // 1100)])
        assert settings.max_body_bytes < len(content) < limit
        ok = http.post("/v1/files", data={"purpose": "batch",
                                          "file": (io.BytesIO(content), "big.jsonl")})
        assert ok.status_code == 200, ok.get_json()
        assert ok.get_json()["bytes"] == len(content)
        stored = http.get(f"/v1/files/{ok.get_json()['id']}/content")
        assert stored.data == content
        too_big = http.post("/v1/files", data={"purpose": "batch",
                                               "file": (io.BytesIO(b"x" * limit), "b.jsonl")})
        assert too_big.status_code == 413
        # A task body keeps its own, smaller limit.
        task = http.post("/v1/tasks", data=b"x" * (settings.max_body_bytes + 1),
                         content_type="application/json")
        assert task.status_code == 413
    finally:
        ingest = app.extensions[EXTENSION]
        ingest.publisher.close()
        ingest.engine.dispose()
        ingest.redis.close()
