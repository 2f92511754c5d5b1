"""Test mockllm's Batch API: the pure state machine and line checks, then the server via openai."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types import Batch

from services.mockllm.answers import answer, embed
from services.mockllm.batches import Plan, lines_run, reached_at, request_counts, status_at
from services.mockllm.files import parse_batch_input
from services.mockllm.protocol import InvalidRequest
from services.mockllm.server import parse_settings
from tests.test_mockllm import control, running_server, stats

CHAT = "/v1/chat/completions"
COMPLETION_S = 0.4

# --- batches.py: where a batch stands at a given time -------------------------------------


@pytest.mark.parametrize(
    ("now", "status"),
    [
        (100.0, "validating"),
        (100.9, "validating"),
        (101.0, "in_progress"),
        (108.9, "in_progress"),
        (109.0, "finalizing"),
        (110.0, "completed"),
        (500.0, "completed"),
    ],
)
def test_status_follows_the_completion_time(now: float, status: str) -> None:
    assert status_at(Plan(created=100.0, completion_s=10.0, total=8), now) == status


def test_lines_are_run_at_an_even_pace_in_file_order() -> None:
    plan = Plan(created=0.0, completion_s=10.0, total=8)
    assert [lines_run(plan, t) for t in (0.5, 1.0, 5.0, 9.0, 20.0)] == [0, 0, 4, 8, 8]
    assert request_counts(plan, 5.0) == {"total": 8, "completed": 4, "failed": 0}


def test_failed_lines_count_once_they_are_run() -> None:
    plan = Plan(created=0.0, completion_s=10.0, total=8, failed_lines=frozenset({1, 6}))
    assert request_counts(plan, 5.0) == {"total": 8, "completed": 3, "failed": 1}
    assert request_counts(plan, 10.0) == {"total": 8, "completed": 6, "failed": 2}


def test_an_expiring_batch_runs_half_its_lines_and_counts_the_rest_failed() -> None:
    plan = Plan(created=0.0, completion_s=10.0, total=9, expire=True)
    assert status_at(plan, 9.5) == "finalizing"
    assert status_at(plan, 10.0) == "expired"
    assert lines_run(plan, 10.0) == 4
    assert request_counts(plan, 10.0) == {"total": 9, "completed": 4, "failed": 5}


def test_a_cancel_stops_running_lines_then_ends_cancelled() -> None:
    plan = Plan(created=0.0, completion_s=10.0, total=8)
    assert status_at(plan, 5.0, cancelled_at=5.0) == "cancelling"
    assert status_at(plan, 5.9, cancelled_at=5.0) == "cancelling"
    assert status_at(plan, 6.0, cancelled_at=5.0) == "cancelled"
    assert request_counts(plan, 50.0, cancelled_at=5.0) == {"total": 8, "completed": 4, "failed": 4}


def test_a_cancel_while_validating_waits_for_validation() -> None:
    plan = Plan(created=0.0, completion_s=10.0, total=4)
    assert status_at(plan, 0.5, cancelled_at=0.2) == "cancelling"
    assert status_at(plan, 1.5, cancelled_at=0.2) == "cancelling"
    assert status_at(plan, 2.0, cancelled_at=0.2) == "cancelled"
    assert request_counts(plan, 2.0, cancelled_at=0.2)["completed"] == 0


def test_a_cancel_after_the_end_changes_nothing() -> None:
    plan = Plan(created=0.0, completion_s=10.0, total=4)
    assert status_at(plan, 12.0, cancelled_at=11.0) == "completed"


def test_an_invalid_batch_fails_after_validation_and_runs_nothing() -> None:
    plan = Plan(created=0.0, completion_s=10.0, total=4, invalid="wrong endpoint")
    assert status_at(plan, 0.5) == "validating"
    assert status_at(plan, 1.0) == "failed"
    assert lines_run(plan, 100.0) == 0


def test_stage_times_are_shown_once_reached() -> None:
    plan = Plan(created=100.0, completion_s=10.0, total=4, expire=True)
    early = reached_at(plan, 105.0)
    assert early["in_progress_at"] == 101 and early["finalizing_at"] is None
    assert early["expired_at"] is None
    ended = reached_at(plan, 120.0)
    assert (ended["finalizing_at"], ended["expired_at"], ended["completed_at"]) == (109, 110, None)
    cancelled = reached_at(Plan(created=100.0, completion_s=10.0, total=4), 120.0, 105.0)
    assert (cancelled["cancelling_at"], cancelled["cancelled_at"]) == (105, 106)
    assert cancelled["finalizing_at"] is None and cancelled["completed_at"] is None


def test_zero_completion_time_ends_at_once() -> None:
    plan = Plan(created=5.0, completion_s=0.0, total=3)
    assert status_at(plan, 5.0) == "completed"
    assert lines_run(plan, 5.0) == 3


# --- files.py: the batch input file is checked line by line -------------------------------


def line(custom_id: str, **changes: Any) -> dict[str, Any]:
    """Return one chat request line of a batch input file."""
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"Q {custom_id}"}]}
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body, **changes}


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(item) + "\n" for item in lines).encode()


def test_blank_lines_are_skipped_and_order_kept() -> None:
    content = jsonl([line("a")]) + b"\n  \n" + jsonl([line("b")])
    assert [parsed.custom_id for parsed in parse_batch_input(content)] == ["a", "b"]


@pytest.mark.parametrize(
    ("bad", "param"),
    [
        (line("x", method="GET"), "method"),
        (line("x", url="/v1/completions"), "url"),
        (line("x", body="text"), "body"),
        (line(""), "custom_id"),
        ({"method": "POST", "url": CHAT, "body": {}}, "custom_id"),
        ({**line("x"), "custom_id": 7}, "custom_id"),
    ],
)
def test_a_bad_line_is_refused_naming_line_and_field(bad: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_batch_input(jsonl([line("ok"), bad]))
    assert caught.value.message.startswith("Line 2: ")
    assert caught.value.param == param


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'{"custom_id": "a"\n', "Line 1: not valid JSON"),
        (b"[1, 2]\n", "Line 1: expected a JSON object"),
        (b"\n\n", "holds no requests"),
        (b"\xff\xfe", "UTF-8"),
    ],
)
def test_unreadable_files_are_refused(content: bytes, expected: str) -> None:
    with pytest.raises(InvalidRequest, match=expected):
        parse_batch_input(content)


def test_a_duplicate_custom_id_is_refused_naming_both_lines() -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_batch_input(jsonl([line("a"), line("b"), line("a")]))
    assert caught.value.code == "duplicate_custom_id"
    assert "Line 3" in caught.value.message and "line 1" in caught.value.message


def test_batch_flags_reach_the_settings() -> None:
    settings = parse_settings(["--batch-completion-s", "5", "--batch-error-rate", "0.25"])
    assert (settings.batch_completion_s, settings.batch_error_rate) == (5.0, 0.25)
    assert not settings.batch_expire
    assert parse_settings(["--batch-expire"]).batch_expire


def test_batch_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTQ_MOCK_BATCH_COMPLETION_S", "7.5")
    monkeypatch.setenv("AGENTQ_MOCK_BATCH_EXPIRE", "true")
    settings = parse_settings([])
    assert (settings.batch_completion_s, settings.batch_expire) == (7.5, True)
    with pytest.raises(SystemExit):
        parse_settings(["--batch-completion-s", "90000"])  # beyond the 24 h window


# --- the real server, through the openai SDK ----------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with running_server("--batch-completion-s", str(COMPLETION_S)) as (base, _):
        yield base


@pytest.fixture
def mock(server: str) -> str:
    """Return the server's base URL with default batch behaviour and zeroed stats."""
    control(server, batch_completion_s=COMPLETION_S, batch_error_rate=0, batch_expire=False, seed=0)
    httpx.post(f"{server}/stats/reset").raise_for_status()
    return server


@pytest.fixture
def client(mock: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{mock}/v1", api_key="test", max_retries=0, timeout=10) as sdk:
        yield sdk


def submit(client: openai.OpenAI, lines: list[dict[str, Any]], endpoint: str = CHAT) -> Batch:
    """Upload the lines as a batch input file and start a batch over it."""
    uploaded = client.files.create(file=("tasks.jsonl", jsonl(lines)), purpose="batch")
    return client.batches.create(
        input_file_id=uploaded.id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
    )


def wait_for_end(client: openai.OpenAI, batch_id: str, timeout: float = 15.0) -> Batch:
    """Poll the batch until it reaches a terminal status."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return batch
        time.sleep(0.05)
    raise TimeoutError(f"batch {batch_id} did not end within {timeout}s")


def records(client: openai.OpenAI, file_id: str | None) -> dict[str, dict[str, Any]]:
    """Return a result file's records by custom_id."""
    assert file_id is not None
    text = client.files.content(file_id).text
    parsed = [json.loads(raw) for raw in text.splitlines()]
    by_id = {record["custom_id"]: record for record in parsed}
    assert len(by_id) == len(parsed)  # one record per line, none repeated
    return by_id


def test_a_batch_runs_every_line_as_a_live_call_would(client: openai.OpenAI) -> None:
    lines = [line(f"task-{i}") for i in range(12)]
    lines[3]["body"]["messages"][0]["content"] = "Sort this.\nlabels: red, green, blue"
    created = submit(client, lines)
    assert created.status == "validating" and created.request_counts is not None
    assert created.request_counts.total == 12
    assert created.input_file_id and created.completion_window == "24h"
    batch = wait_for_end(client, created.id)
    assert batch.status == "completed" and batch.error_file_id is None
    assert batch.completed_at is not None and batch.in_progress_at is not None
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (12, 0)
    output = records(client, batch.output_file_id)
    assert set(output) == {f"task-{i}" for i in range(12)}
    for sent in lines:
        response = output[sent["custom_id"]]["response"]
        assert response["status_code"] == 200
        body = response["body"]
        expected = answer(sent["body"]["messages"], "gpt-4o-mini").text
        assert body["choices"][0]["message"]["content"] == expected
        assert body["usage"]["total_tokens"] == (
            body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
        )
    assert output["task-3"]["response"]["body"]["choices"][0]["message"]["content"] in {
        "red",
        "green",
        "blue",
    }
    assert client.files.retrieve(batch.output_file_id or "").purpose == "batch_output"


def test_embedding_lines_are_answered(client: openai.OpenAI) -> None:
    body = {"model": "text-embedding-3-small", "input": "hello there"}
    batch = wait_for_end(
        client,
        submit(client, [line("e", url="/v1/embeddings", body=body)], endpoint="/v1/embeddings").id,
    )
    vector = records(client, batch.output_file_id)["e"]["response"]["body"]["data"][0]
    assert vector["embedding"] == pytest.approx(embed("hello there"))


def test_partial_failures_go_to_the_error_file(client: openai.OpenAI, mock: str) -> None:
    control(mock, batch_error_rate=0.5, seed=7)
    lines = [line(f"p-{i}") for i in range(40)]
    lines[0]["body"] = {"model": "gpt-4o-mini", "messages": []}  # refused as live would be
    batch = wait_for_end(client, submit(client, lines).id)
    assert batch.status == "completed" and batch.request_counts is not None
    output = records(client, batch.output_file_id)
    errors = records(client, batch.error_file_id)
    assert set(output) | set(errors) == {f"p-{i}" for i in range(40)}
    assert not set(output) & set(errors)
    assert 5 < len(errors) < 35  # about half of 40, seeded
    assert (batch.request_counts.completed, batch.request_counts.failed) == (
        len(output),
        len(errors),
    )
    codes = {record["response"]["status_code"] for record in errors.values()}
    assert codes <= {400, 500} and 500 in codes
    assert all(record["response"]["body"]["error"]["message"] for record in errors.values())
    assert "p-0" in errors  # a body the live endpoint refuses is not answered in a batch
    assert errors["p-0"]["response"]["body"]["error"]["param"] == "messages"


def test_an_expired_batch_reports_its_unfinished_lines(client: openai.OpenAI, mock: str) -> None:
    control(mock, batch_expire=True)
    lines = [line(f"x-{i}") for i in range(10)]
    batch = wait_for_end(client, submit(client, lines).id)
    assert batch.status == "expired" and batch.expired_at is not None
    output = records(client, batch.output_file_id)
    errors = records(client, batch.error_file_id)
    assert set(output) == {f"x-{i}" for i in range(5)}  # the first half ran, in file order
    assert set(errors) == {f"x-{i}" for i in range(5, 10)}
    assert {record["error"]["code"] for record in errors.values()} == {"batch_expired"}
    assert all(record["response"] is None for record in errors.values())
    assert batch.request_counts is not None and batch.request_counts.failed == 5


def test_settings_changed_later_do_not_rewrite_a_batch_in_flight(
    client: openai.OpenAI, mock: str
) -> None:
    created = submit(client, [line("keep")])
    control(mock, batch_expire=True, batch_error_rate=1)
    batch = wait_for_end(client, created.id)
    assert batch.status == "completed" and "keep" in records(client, batch.output_file_id)


def test_cancel_moves_through_cancelling_to_cancelled(client: openai.OpenAI, mock: str) -> None:
    control(mock, batch_completion_s=6.0)  # long enough for the cancel to arrive mid-way
    created = submit(client, [line(f"c-{i}") for i in range(6)])
    cancelling = client.batches.cancel(created.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    batch = wait_for_end(client, created.id)
    assert batch.status == "cancelled" and batch.cancelled_at is not None
    errors = records(client, batch.error_file_id)
    output = records(client, batch.output_file_id) if batch.output_file_id else {}
    assert set(output) | set(errors) == {f"c-{i}" for i in range(6)} and errors
    assert batch.request_counts is not None and batch.request_counts.failed == len(errors)
    assert {record["error"]["code"] for record in errors.values()} == {"batch_cancelled"}
    with pytest.raises(openai.ConflictError, match="cancelled"):
        client.batches.cancel(created.id)


def test_list_pages_newest_first(client: openai.OpenAI) -> None:
    ids = [submit(client, [line(f"l-{n}")]).id for n in range(5)]
    first = client.batches.list(limit=2)
    assert [batch.id for batch in first.data] == ids[::-1][:2]
    assert first.has_more
    assert [batch.id for batch in client.batches.list(limit=2, after=ids[4]).data] == [
        ids[3],
        ids[2],
    ]
    listed = [batch.id for batch in client.batches.list(limit=2)]  # the SDK follows the pages
    assert listed[:5] == ids[::-1]
    with pytest.raises(openai.BadRequestError, match="limit"):
        client.batches.list(limit=0)


def test_a_bad_file_is_refused_naming_line_and_field(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(
            file=("bad.jsonl", jsonl([line("a"), line("b", method="GET")])), purpose="batch"
        )
    assert "Line 2" in caught.value.message
    assert isinstance(caught.value.body, dict) and caught.value.body["param"] == "method"
    with pytest.raises(openai.BadRequestError, match="duplicate custom_id"):
        client.files.create(file=("dup.jsonl", jsonl([line("a"), line("a")])), purpose="batch")
    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.files.create(file=("f.jsonl", jsonl([line("a")])), purpose="fine-tune")


def test_malformed_uploads_are_refused(mock: str) -> None:
    as_json = httpx.post(f"{mock}/v1/files", json={"purpose": "batch"})
    assert as_json.status_code == 400 and "multipart" in as_json.json()["error"]["message"]
    no_file = httpx.post(f"{mock}/v1/files", files={"purpose": (None, "batch")})
    assert no_file.status_code == 400 and no_file.json()["error"]["param"] == "file"
    no_purpose = httpx.post(f"{mock}/v1/files", files={"file": ("a.jsonl", jsonl([line("a")]))})
    assert no_purpose.status_code == 400 and no_purpose.json()["error"]["param"] == "purpose"
    as_text = httpx.post(f"{mock}/v1/batches", content=b"not json")
    assert as_text.status_code == 400


def test_bad_batch_requests_are_refused(client: openai.OpenAI, mock: str) -> None:
    uploaded = client.files.create(file=("t.jsonl", jsonl([line("a")])), purpose="batch")
    with pytest.raises(openai.BadRequestError, match="completion_window"):
        client.batches.create(
            input_file_id=uploaded.id,
            endpoint=CHAT,
            completion_window="1h",  # type: ignore[arg-type]
        )
    with pytest.raises(openai.BadRequestError, match="input_file_id"):
        client.batches.create(input_file_id="file-nope", endpoint=CHAT, completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")
    assert stats(mock)["batches"] == 0


def test_lines_for_another_endpoint_fail_the_batch(client: openai.OpenAI) -> None:
    batch = wait_for_end(client, submit(client, [line("a")], endpoint="/v1/embeddings").id)
    assert batch.status == "failed" and batch.errors is not None and batch.errors.data
    assert "/v1/chat/completions" in (batch.errors.data[0].message or "")
    assert batch.output_file_id is None and batch.error_file_id is None


def test_files_can_be_read_and_deleted(client: openai.OpenAI) -> None:
    content = jsonl([line("a")])
    uploaded = client.files.create(file=("mine.jsonl", content), purpose="batch")
    assert client.files.retrieve(uploaded.id).filename == "mine.jsonl"
    assert client.files.content(uploaded.id).content == content
    assert client.files.delete(uploaded.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)


def test_stats_count_lines_per_custom_id_across_batches(client: openai.OpenAI, mock: str) -> None:
    submit(client, [line("once"), line("twice")])
    submit(client, [line("twice")])
    counted = stats(mock)
    assert counted["batches"] == 2
    assert counted["batch_lines"] == {"once": 1, "twice": 2}
    assert counted["requests"] == 0  # batch lines are not live requests
    httpx.post(f"{mock}/stats/reset").raise_for_status()
    assert stats(mock)["batch_lines"] == {}


def test_control_refuses_bad_batch_settings(mock: str) -> None:
    for bad in ({"batch_error_rate": 1.5}, {"batch_completion_s": -1}, {"batch_expire": "yes"}):
        response = httpx.post(f"{mock}/control", json=bad)
        assert response.status_code == 400, bad
        assert next(iter(bad)) in response.json()["error"]["message"]
