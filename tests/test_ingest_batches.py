"""agentq speaks the OpenAI Batch API to its own users: the real openai SDK against a real
ingest and pipeline (mockllm as the provider), with two tenants' keys."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types import Batch

from bench.stack import PIPELINE_SERVICES, Pipeline, running_pipeline, wait_until
from services.common.api_keys import digest_of
from services.common.store import make_engine
from services.ingest import batch_store

pytestmark = pytest.mark.database

ACME_KEY, BETA_KEY = "acme-batch-key-0123456789", "beta-batch-key-0123456789"
MAX_FILE_BYTES = 600_000
# Every line is a deferrable task, which may go out through mockllm's Batch API: run the
# batcher, sending batches out and polling them often.
SERVICES = PIPELINE_SERVICES + (
    ("batcher",) if importlib.util.find_spec("services.batcher.service") else ())
QUICK_BATCHES = "\n[batches]\nmax_age_s = 0.5\npoll_s = 0.5\n"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    keys = ",".join(f"{tenant}:sha256:{digest_of(key).hex()}"
                    for tenant, key in (("acme", ACME_KEY), ("beta", BETA_KEY)))
    with running_pipeline(tmp_path_factory.mktemp("batches"), workers=1, services=SERVICES,
                          env={"AGENTQ_API_KEYS": keys,
                               "AGENTQ_BATCH_FILE_MAX_BYTES": str(MAX_FILE_BYTES)},
                          mock_args=("--batch-completion-s", "0.5"),
                          extra_config=QUICK_BATCHES) as running:
        yield running


def client(pipeline: Pipeline, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{pipeline.ingest}/v1", api_key=key, max_retries=0)


def request(custom_id: str, content: str, model: str = "gpt-4o-mini",
            **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": content}], **body}}


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(item) + "\n" for item in lines).encode()


def until_ended(sdk: openai.OpenAI, batch_id: str, timeout: float = 120) -> Batch:
    ended: list[Batch] = []

    def done() -> bool:
        batch = sdk.batches.retrieve(batch_id)
        if batch.status in ("completed", "cancelled", "failed", "expired"):
            ended.append(batch)
        return bool(ended)

    wait_until(done, timeout, f"batch {batch_id} to end", interval=0.3)
    return ended[0]


def records(sdk: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(row) for row in sdk.files.content(file_id).text.splitlines()]


def test_the_sdk_batch_round_trip_answers_every_custom_id(pipeline: Pipeline) -> None:
    acme = client(pipeline, ACME_KEY)
    lines = [request(f"req-{i}", f"Classify: parcel {i} arrived late. labels: complaint, praise",
                     model="cheap" if i % 2 else "gpt-4o-mini", max_tokens=20)
             for i in range(40)]
    uploaded = acme.files.create(file=("nightly.jsonl", jsonl(lines)), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes == len(jsonl(lines))
    assert acme.files.retrieve(uploaded.id).filename == "nightly.jsonl"
    batch = acme.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                completion_window="24h", metadata={"job": "nightly"})
    assert batch.status in ("validating", "in_progress") and batch.metadata == {"job": "nightly"}
    assert batch.request_counts is not None and batch.request_counts.total == 40

    ended = until_ended(acme, batch.id)
    assert ended.status == "completed" and ended.error_file_id is None
    assert ended.request_counts is not None
    assert (ended.request_counts.completed, ended.request_counts.failed) == (40, 0)
    assert ended.completed_at is not None and ended.in_progress_at is not None
    output = records(acme, ended.output_file_id)
    assert sorted(r["custom_id"] for r in output) == sorted(f"req-{i}" for i in range(40))
    for record in output:
        body = record["response"]["body"]
        assert record["response"]["status_code"] == 200 and record["error"] is None
        assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"]
        assert body["usage"]["prompt_tokens"] > 0 and body["model"]
    # Each line was a task like any other: routed (a tier name is a hint), costed, kept.
    task = httpx.get(f"{pipeline.ingest}/v1/tasks/{batch.id}-1",
                     headers={"Authorization": f"Bearer {ACME_KEY}"}).json()
    assert task["result"]["tier"] == "cheap" and task["result"]["cost_usd"] > 0
    assert task["result"]["metadata"] == {"batch": batch.id, "custom_id": "req-1"}
    assert batch.id in [b.id for b in acme.batches.list(limit=100)]
    # Retrieving an ended batch again answers the same files.
    assert acme.batches.retrieve(batch.id).output_file_id == ended.output_file_id


@pytest.mark.parametrize(("lines", "param", "line_number"), [
    ([request("a", "x"), {**request("b", "x"), "method": "GET"}], "method", 2),
    ([request("a", "x"), {**request("b", "x"), "url": "/v1/embeddings"}], "url", 2),
    ([request("a", "x"), request("a", "y")], "custom_id", 2),
    ([request("", "x")], "custom_id", 1),
    ([request("a", "x"), {"custom_id": "b", "method": "POST",
                          "url": "/v1/chat/completions"}], "body", 2),
    ([request("a", "x", tools=[{"type": "function"}])], "body.tools", 1),
])
def test_a_bad_file_is_refused_naming_the_line_and_param(pipeline: Pipeline,
                                                         lines: list[dict[str, Any]],
                                                         param: str, line_number: int) -> None:
    acme = client(pipeline, ACME_KEY)
    with pytest.raises(openai.BadRequestError) as refused:
        acme.files.create(file=("bad.jsonl", jsonl(lines)), purpose="batch")
    assert refused.value.param == param
    assert f"Line {line_number}:" in refused.value.message


def test_bad_uploads_and_bodies_are_400s_naming_the_field(pipeline: Pipeline) -> None:
    acme = client(pipeline, ACME_KEY)
    with pytest.raises(openai.BadRequestError) as purpose:
        acme.files.create(file=("a.jsonl", jsonl([request("a", "x")])), purpose="fine-tune")
    assert purpose.value.param == "purpose"
    with pytest.raises(openai.APIStatusError) as too_big:
        acme.files.create(file=("big.jsonl", b"x" * (MAX_FILE_BYTES + 1)), purpose="batch")
    assert too_big.value.status_code == 413
    good = acme.files.create(file=("g.jsonl", jsonl([request("a", "x")])), purpose="batch")
    with pytest.raises(openai.BadRequestError) as window:
        acme.batches.create(input_file_id=good.id, endpoint="/v1/chat/completions",
                            completion_window="48h")  # type: ignore[arg-type]
    assert window.value.param == "completion_window"
    with pytest.raises(openai.BadRequestError) as missing:
        acme.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions",
                            completion_window="24h")
    assert missing.value.param == "input_file_id"
    headers = {"Authorization": f"Bearer {ACME_KEY}"}
    for response in (
        httpx.post(f"{pipeline.ingest}/v1/batches", content=b"{not json", headers=headers),
        httpx.post(f"{pipeline.ingest}/v1/files", data={"purpose": "batch"}, headers=headers),
        httpx.get(f"{pipeline.ingest}/v1/batches?limit=0", headers=headers),
    ):
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] in ("body", "file", "limit")
    assert httpx.get(f"{pipeline.ingest}/v1/batches").status_code == 401


def test_another_tenants_files_and_batches_are_unknown(pipeline: Pipeline) -> None:
    acme, beta = client(pipeline, ACME_KEY), client(pipeline, BETA_KEY)
    uploaded = acme.files.create(file=("mine.jsonl", jsonl([request("a", "x")])),
                                 purpose="batch")
    batch = acme.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        beta.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        beta.batches.cancel(batch.id)
    with pytest.raises(openai.NotFoundError):
        beta.files.content(uploaded.id)
    with pytest.raises(openai.NotFoundError):
        beta.files.retrieve(uploaded.id)
    with pytest.raises(openai.BadRequestError):  # acme's file is no input file of beta's
        beta.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                            completion_window="24h")
    assert batch.id not in [b.id for b in beta.batches.list(limit=100)]
    ended = until_ended(acme, batch.id)
    with pytest.raises(openai.NotFoundError):
        beta.files.content(str(ended.output_file_id))


def test_a_cancelled_batch_ends_cancelled_with_every_line_accounted_for(
        pipeline: Pipeline) -> None:
    acme = client(pipeline, ACME_KEY)
    lines = [request(f"c{i}", f"Summarise item {i} of the cancel test, {time.time()}")
             for i in range(300)]
    uploaded = acme.files.create(file=("c.jsonl", jsonl(lines)), purpose="batch")
    batch = acme.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                completion_window="24h")
    cancelling = acme.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    ended = until_ended(acme, batch.id)
    assert ended.status == "cancelled" and ended.cancelled_at is not None
    answered = records(acme, ended.output_file_id)
    refused = records(acme, ended.error_file_id)
    assert sorted(r["custom_id"] for r in answered + refused) == sorted(f"c{i}" for i in range(300))
    assert ended.request_counts is not None
    assert ended.request_counts.completed + ended.request_counts.failed == 300
    assert all(r["error"]["code"] == "batch_cancelled" for r in refused if r["response"] is None)
    with pytest.raises(openai.ConflictError):
        acme.batches.cancel(batch.id)


def test_files_live_in_the_shared_store_not_in_one_process(pipeline: Pipeline) -> None:
    acme = client(pipeline, ACME_KEY)
    uploaded = acme.files.create(file=("s.jsonl", jsonl([request("a", "x")])), purpose="batch")
    pipeline.stack.stop("ingest")
    pipeline.stack.start("ingest", "ingest")
    wait_until(lambda: httpx.get(f"{pipeline.ingest}/healthz").status_code == 200, 60,
               "ingest to come back")
    assert acme.files.content(uploaded.id).content == jsonl([request("a", "x")])


def test_a_batch_survives_ingest_killed_while_accepting_its_lines(pipeline: Pipeline) -> None:
    acme = client(pipeline, ACME_KEY)
    total = 1000
    lines = [request(f"k{i}", f"Classify line {i} of the kill test. labels: a, b")
             for i in range(total)]
    uploaded = acme.files.create(file=("k.jsonl", jsonl(lines)), purpose="batch")
    batch = acme.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                completion_window="24h")
    engine = make_engine(pipeline.stack.env["AGENTQ_DATABASE_URL"])
    try:
        wait_until(lambda: batch_store.progress(engine, batch.id).accepted > 0, 30,
                   "the first lines to be accepted", interval=0.02)
        process = pipeline.stack.processes.pop("ingest")
        os.killpg(process.pid, signal.SIGKILL)  # gunicorn and its workers, mid-acceptance
        process.wait()
        at_kill = batch_store.progress(engine, batch.id).accepted
        assert 0 < at_kill < total, at_kill
        pipeline.stack.start("ingest", "ingest")
        wait_until(lambda: httpx.get(f"{pipeline.ingest}/healthz").status_code == 200, 60,
                   "ingest to come back")
        ended = until_ended(acme, batch.id, timeout=150)
        assert ended.status == "completed" and ended.request_counts is not None
        assert ended.request_counts.completed == total
        answered = [r["custom_id"] for r in records(acme, ended.output_file_id)]
        assert sorted(answered) == sorted(f"k{i}" for i in range(total))  # each exactly once
    finally:
        engine.dispose()
