"""The whole pipeline as real processes: HTTP and AMQP in, results stored, over RabbitMQ."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pika
import pytest

from bench.stack import AMQP_URL, Pipeline, http, running_pipeline, wait_until

pytestmark = pytest.mark.database


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    with running_pipeline(tmp_path_factory.mktemp("pipeline"), workers=2,
                          env={"AGENTQ_MAX_ATTEMPTS": "4", "AGENTQ_RETRY_BASE_MS": "100",
                               "AGENTQ_RETRY_MAX_MS": "2000"}) as running:
        yield running


def publish(ns: str, bodies: list[bytes], reply_to: str | None = None) -> None:
    """Publish raw bodies to `<ns>.submit` with pika, as any AMQP client would."""
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.confirm_delivery()
    for body in bodies:
        channel.basic_publish(f"{ns}.submit", "task", body, pika.BasicProperties(
            content_type="application/json", delivery_mode=2, reply_to=reply_to),
            mandatory=True)
    connection.close()


def test_two_hundred_tasks_through_both_doors(pipeline: Pipeline) -> None:
    http_ids = [pipeline.submit({"prompt": f"http task {i}", "kind": "classify",
                                 "tenant": f"t{i % 3}", "metadata": {"n": i}})
                for i in range(90)]
    status, listed = http("POST", f"{pipeline.ingest}/v1/tasks",
                          [{"prompt": f"listed task {i}", "kind": "summarize"} for i in range(10)])
    assert status == 202 and [item["status"] for item in listed] == ["queued"] * 10
    http_ids += [item["id"] for item in listed]
    amqp_ids = [str(uuid.uuid4()) for _ in range(100)]
    publish(pipeline.ns, [json.dumps({"id": task_id, "prompt": f"amqp task {i}",
                                      "kind": "reason" if i % 10 == 0 else "extract"}).encode()
                          for i, task_id in enumerate(amqp_ids)])

    done = pipeline.wait_done(http_ids + amqp_ids, timeout=120)
    assert {body["status"] for body in done.values()} == {"succeeded"}
    for body in done.values():
        result = body["result"]
        assert result["cost_usd"] > 0 and result["usage"]["prompt_tokens"] > 0
        assert result["model"] and result["tier"] in ("cheap", "standard", "premium")
        assert result["latency_ms"]["total"] >= result["latency_ms"]["llm"] > 0
    assert done[http_ids[4]]["result"]["metadata"] == {"n": 4}
    assert done[http_ids[95]]["result"]["tier"] == "standard"
    assert done[amqp_ids[10]]["result"]["tier"] == "premium"
    assert done[amqp_ids[11]]["result"]["route_reason"] == "kind:extract"


def test_repeated_task_is_a_cache_hit_without_a_provider_call(pipeline: Pipeline) -> None:
    task = {"prompt": f"What is the capital of France? {uuid.uuid4()}", "kind": "classify"}
    first = pipeline.wait_done([pipeline.submit(task)])
    first_result = next(iter(first.values()))["result"]
    assert first_result["cache"] == "miss"
    calls_before = pipeline.stats()["requests"]

    second_id = pipeline.submit(task)
    second = pipeline.wait_done([second_id])[second_id]["result"]
    assert second["cache"] == "exact" and second["cost_usd"] == 0
    assert second["output"] == first_result["output"]
    assert second["cost_saved_usd"] > first_result["cost_usd"]
    assert pipeline.stats()["requests"] == calls_before


def test_resubmitting_an_id_runs_it_once(pipeline: Pipeline) -> None:
    task = {"id": f"fixed-{uuid.uuid4().hex}", "prompt": "once only", "temperature": 0.5}
    calls_before = pipeline.stats()["requests"]
    task_id = pipeline.submit(task)
    pipeline.wait_done([task_id])
    status, body = http("POST", f"{pipeline.ingest}/v1/tasks", task)
    assert status == 202 and body["id"] == task_id and body["status"] == "succeeded"
    publish(pipeline.ns, [json.dumps(task).encode()])
    status, body = http("POST", f"{pipeline.ingest}/v1/tasks", task)
    assert pipeline.task(task_id)["result"]["attempts"] == 1
    assert pipeline.stats()["requests"] == calls_before + 1


def test_provider_429_and_500_for_a_while_still_all_succeed(pipeline: Pipeline) -> None:
    before = pipeline.stats()
    pipeline.control(fail_next={"count": 6, "status": 429, "retry_after": 0.3})
    ids = [pipeline.submit({"prompt": f"flaky 429 {i} {uuid.uuid4()}"}) for i in range(10)]
    pipeline.wait_done(ids, timeout=60)
    pipeline.control(fail_next={"count": 6, "status": 500})
    ids2 = [pipeline.submit({"prompt": f"flaky 500 {i} {uuid.uuid4()}"}) for i in range(10)]
    done = pipeline.wait_done(ids + ids2, timeout=60)
    assert {body["status"] for body in done.values()} == {"succeeded"}
    assert max(body["result"]["attempts"] for body in done.values()) > 1
    after = pipeline.stats()
    assert after["rate_limited"] - before["rate_limited"] == 6
    assert after["errors"] - before["errors"] == 6


def test_a_task_that_keeps_failing_is_dead_lettered(pipeline: Pipeline) -> None:
    pipeline.control(fail_next={"count": 4, "status": 503})
    task_id = pipeline.submit({"prompt": f"doomed {uuid.uuid4()}"})
    result = pipeline.wait_done([task_id], timeout=60)[task_id]["result"]
    assert result["status"] == "failed" and result["attempts"] == 4, (result, pipeline.stats())
    assert result["error"]["code"] == "provider_unavailable"

    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    found = wait_until(lambda: _find_in_queue(channel, f"{pipeline.ns}.dead", task_id), 10,
                       "the dead letter")
    assert "provider_unavailable" in found.headers["x-agentq-error"]
    connection.close()


def test_a_dead_task_replayed_from_the_cli_succeeds_once(pipeline: Pipeline,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    from services.cli import main as agentq

    pipeline.control(fail_next={"count": 4, "status": 503})
    task_id = pipeline.submit({"prompt": f"doomed, then replayed {uuid.uuid4()}"})
    assert pipeline.wait_done([task_id], timeout=60)[task_id]["status"] == "failed"
    monkeypatch.setenv("AGENTQ_NAMESPACE", pipeline.ns)
    monkeypatch.setenv("AGENTQ_DATABASE_URL", pipeline.stack.env["AGENTQ_DATABASE_URL"])

    def listed() -> bool:
        agentq(["dlq", "list", "--json"])
        return task_id in capsys.readouterr().out

    wait_until(listed, 10, "the dead letter listed")
    calls = pipeline.stats()["requests"]
    assert agentq(["dlq", "replay", "--id", task_id]) == 0
    assert json.loads(capsys.readouterr().out)["task_ids"] == [task_id]
    assert agentq(["dlq", "replay", "--id", task_id]) == 0  # idempotent
    assert json.loads(capsys.readouterr().out)["replayed"] == 0
    result = wait_until(lambda: (body := pipeline.task(task_id))["status"] == "succeeded"
                        and body["result"], 60, "the replayed task to succeed")
    assert result["error"] is None and result["output"]
    assert pipeline.stats()["requests"] == calls + 1  # one paid call for the replay


def _find_in_queue(channel: Any, queue: str, task_id: str) -> Any:
    """Return the properties of the message carrying `task_id` in `queue`, consuming it."""
    while True:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return None
        if json.loads(body).get("id") == task_id:
            return properties


def test_reply_to_gets_the_result(pipeline: Pipeline) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    reply_queue = channel.queue_declare("", exclusive=True).method.queue
    task_id = str(uuid.uuid4())
    publish(pipeline.ns, [json.dumps({"id": task_id, "prompt": "reply to me"}).encode()],
            reply_to=reply_queue)

    def received() -> Any:
        method, properties, body = channel.basic_get(reply_queue, auto_ack=True)
        return json.loads(body) if method else None

    result = wait_until(received, 30, "the result on the reply queue")
    assert result["task_id"] == task_id and result["status"] == "succeeded"
    connection.close()


@pytest.mark.parametrize(("body", "field"), [
    ({"kind": "classify"}, "messages"),
    ({"prompt": "x", "priority": 42}, "priority"),
    ({"prompt": "x", "messages": [{"role": "user", "content": "y"}]}, None),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    ([{"prompt": "ok"}, {"prompt": "x", "tier": "gold"}], "[1].tier"),
])
def test_bad_http_input_is_a_400_naming_the_field(pipeline: Pipeline, body: Any,
                                                  field: str | None) -> None:
    status, error = http("POST", f"{pipeline.ingest}/v1/tasks", body)
    assert status == 400, error
    assert error["error"]["message"]
    if field is not None:
        assert error["error"]["field"] == field


def test_bad_bodies_get_their_errors_and_nothing_else_breaks(pipeline: Pipeline) -> None:
    status, error = http("POST", f"{pipeline.ingest}/v1/tasks", raw=b"{not json")
    assert status == 400 and error["error"]["field"] == "body"
    status, error = http("POST", f"{pipeline.ingest}/v1/tasks", raw=b"x" * (1024 * 1024 + 10))
    assert status == 413
    status, _ = http("GET", f"{pipeline.ingest}/v1/tasks/no-such-task")
    assert status == 404

    invalid = json.dumps({"prompt": "x", "priority": 99}).encode()
    publish(pipeline.ns, [b"\xff\xfe garbage", invalid])
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    errors: list[str] = []

    def two_rejected() -> bool:
        method, properties, _ = channel.basic_get(f"{pipeline.ns}.rejected", auto_ack=True)
        if method is not None:
            errors.append(properties.headers["x-agentq-error"])
        return len(errors) == 2

    wait_until(two_rejected, 30, "two rejected messages")
    assert any("priority" in error for error in errors)
    connection.close()

    task_id = pipeline.submit({"prompt": f"still working {uuid.uuid4()}"})
    assert pipeline.wait_done([task_id])[task_id]["status"] == "succeeded"
    for name in ("ingest", "intake", "router", "recorder", "worker-1", "worker-2"):
        assert pipeline.stack.alive(name), pipeline.stack.log(name)[-2000:]


def test_healthz_reports_its_dependencies(pipeline: Pipeline) -> None:
    status, body = http("GET", f"{pipeline.ingest}/healthz")
    assert status == 200 and body["status"] == "ok"


def test_a_task_shows_running_while_the_provider_works(pipeline: Pipeline) -> None:
    pipeline.control(latency_ms=3000)
    try:
        task_id = pipeline.submit({"prompt": f"slow one {uuid.uuid4()}"})
        wait_until(lambda: pipeline.task(task_id)["status"] == "running", 10, "running")
        assert pipeline.wait_done([task_id])[task_id]["status"] == "succeeded"
    finally:
        pipeline.control(latency_ms=0)
