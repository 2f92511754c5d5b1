"""Hypothesis against both doors with thousands of generated bodies: JSON of every shape,
hostile strings (lone surrogates, 4-byte letters, "." and ".."), huge integers, deep nesting,
raw bytes. HTTP never answers 5xx, and every 4xx is a JSON error naming a field; every AMQP
message ends as a task in the store or in `rejected` with a reason."""

from __future__ import annotations

import json
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pika
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bench.stack import wait_until
from tests.faults.fuzz_bodies import FOUR_BYTE, bodies, encoded, payloads
from tests.faults.harness import FIGURES, FaultPipeline, fault_pipeline
from tests.faults.servers import OwnRabbit, OwnRedis

HTTP_CASES = 1200
AMQP_CASES = 1200
CASE_HEADER = "x-fuzz-case"
FUZZ = settings(max_examples=HTTP_CASES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck), print_blob=False)


@pytest.fixture(scope="module")
def doors(tmp_path_factory: pytest.TempPathFactory, own_rabbit: OwnRabbit,
          own_redis: OwnRedis) -> Iterator[FaultPipeline]:
    with fault_pipeline(tmp_path_factory.mktemp("fuzz"), own_rabbit, own_redis,
                        latency_ms=0) as running:
        yield running


def _record(line: str) -> None:
    FIGURES.append(line)
    print(line)


def test_http_door_never_answers_5xx(doors: FaultPipeline) -> None:
    histogram: Counter[int] = Counter()
    problems: list[str] = []
    with httpx.Client(timeout=30) as client:

        @FUZZ
        @given(body=bodies)
        @example(body=b'{"": 1}')  # an unknown key named "": the error must still name it
        @example(body=b'{"id": "..", "prompt": "x"}')
        @example(body=b'{"prompt": "\\ud800 alone"}')
        @example(body=json.dumps({"prompt": "x", "tenant": FOUR_BYTE * 17}).encode())
        @example(body=b'{"prompt": "x", "max_tokens": ' + b"9" * 5000 + b"}")
        @example(body=b"[" * 100_000 + b"]" * 100_000)
        def post(body: bytes) -> None:
            response = client.post(f"{doors.ingest}/v1/tasks", content=body,
                                   headers={"Content-Type": "application/json"})
            histogram[response.status_code] += 1
            status = response.status_code
            if status >= 500:
                problems.append(f"{status} for {body[:200]!r}: {response.text[:200]}")
            elif status >= 400:
                try:
                    error = response.json()["error"]
                except (ValueError, KeyError, TypeError):
                    problems.append(f"{status} without a JSON error for {body[:200]!r}")
                    return
                if not (isinstance(error.get("field"), str) and error["field"]
                        and error.get("message")):
                    problems.append(f"{status} naming no field for {body[:200]!r}: {error}")
            else:
                assert status == 202, (status, response.text[:300])

        try:
            post()
        finally:
            _record(f"scenario=fuzz-http cases={sum(histogram.values())} "
                    f"histogram={dict(sorted(histogram.items()))} problems={len(problems)}")
    assert not problems, problems[:10]


def _with_case_id(value: Any, case: int) -> Any:
    # A task without an id gets one we can look up; one with an id keeps it.
    if isinstance(value, dict) and "id" not in value:
        return {"id": f"fz-{case}", **value}
    return value


def _header(headers: dict[str, Any], name: str) -> str:
    value = headers.get(name)
    return value.decode() if isinstance(value, bytes) else str(value)


def test_amqp_door_stores_or_rejects_every_message(doors: FaultPipeline) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(doors.rabbit.url))
    channel = connection.channel()
    channel.confirm_delivery()
    sent: dict[str, tuple[str, str] | None] = {}  # case -> (tenant, id) it would be stored as
    bodies_sent: dict[str, bytes] = {}

    @settings(FUZZ, max_examples=AMQP_CASES)
    @given(case=st.one_of(payloads.map(lambda v: ("json", v)),
                          st.binary(max_size=64).map(lambda b: ("raw", b))))
    @example(case=("json", {"": 1}))
    @example(case=("json", {"id": ".", "prompt": "x"}))
    @example(case=("json", {"prompt": "x", "tenant": FOUR_BYTE * 16}))  # 64 bytes: valid
    @example(case=("json", {"prompt": "x", "tenant": "..", "kind": "."}))
    @example(case=("raw", b"\xff\xfe\x00"))
    def publish(case: tuple[str, Any]) -> None:
        number = str(len(sent))
        kind, value = case
        if kind == "json":
            value = _with_case_id(value, int(number))
            body = encoded(value)
            key = (value.get("tenant", "default"), value.get("id")) \
                if isinstance(value, dict) else None
        else:
            body, key = value, None
        channel.basic_publish(f"{doors.ns}.submit", "task", body, pika.BasicProperties(
            content_type="application/json", delivery_mode=2,
            headers={CASE_HEADER: number}), mandatory=True)
        sent[number] = key if key and all(isinstance(part, str) for part in key) else None
        bodies_sent[number] = body

    try:
        publish()
    finally:
        connection.close()

    rejected: dict[str, str] = {}
    stored: set[str] = set()
    with httpx.Client(timeout=10) as client:

        def accounted() -> bool:
            for headers, _ in doors.drain(f"{doors.ns}.rejected"):
                rejected[_header(headers, CASE_HEADER)] = _header(headers, "x-agentq-error")
            for case, key in sent.items():
                if case in rejected or case in stored or key is None:
                    continue
                tenant, task_id = key
                quoted = urllib.parse.quote(task_id, safe="")
                try:
                    if client.get(f"{doors.ingest}/v1/tasks/{quoted}",
                                  params={"tenant": tenant}).status_code == 200:
                        stored.add(case)
                except (httpx.TransportError, UnicodeError):
                    continue
            return len(rejected.keys() | stored) >= len(sent)

        try:
            wait_until(accounted, 90, "every fuzzed message stored or rejected", interval=0.5)
        except AssertionError:
            pass  # reported below, case by case
        missing = sorted(set(sent) - rejected.keys() - stored, key=int)
        _record(f"scenario=fuzz-amqp cases={len(sent)} stored={len(stored)} "
                f"rejected={len(rejected)} missing={len(missing)}")
    reasonless = {case: reason for case, reason in rejected.items()
                  if not reason or reason == "None"}
    assert not reasonless, reasonless
    assert not missing, [(case, sent[case], bodies_sent[case][:300]) for case in missing[:10]]
    crashed = [reason for reason in rejected.values() if "handler failed" in reason]
    assert not crashed, crashed[:5]
    for name in ("ingest", "intake", "router", "recorder", "worker-1", "worker-2"):
        assert doors.stack.alive(name), f"{name} died"
    json.dumps(sorted(rejected.values()))  # reasons are plain text
