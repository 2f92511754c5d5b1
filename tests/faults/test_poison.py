"""Poison over AMQP, amid good tasks: bodies that are not JSON, JSON of the wrong shape or
types, bodies over the size limit, nesting deep enough to break a recursive parser, and
non-Tasks sent straight to the router's and the workers' queues. Each one ends in
`rejected` with its reason; the good tasks all finish and no service goes down."""

from __future__ import annotations

import json

import pika

from bench.stack import wait_until
from tests.faults.harness import FIGURES, FaultPipeline, Load, check, settle

ERROR_HEADER = "x-agentq-error"
CASE_HEADER = "x-fault-case"
DEEP = 100_000

SUBMIT_POISON: dict[str, bytes] = {
    "not-json": b"\xff\xfe this is not JSON {",
    "empty": b"",
    "truncated": b'{"prompt": "cut off',
    "null": b"null",
    "a-list": b'[{"prompt": "lists are for HTTP"}]',
    "a-string": b'"prompt"',
    "prompt-a-number": b'{"prompt": 5}',
    "messages-a-string": b'{"messages": "hello"}',
    "role-unknown": b'{"messages": [{"role": "wizard", "content": "x"}]}',
    "priority-a-word": b'{"prompt": "x", "priority": "high"}',
    "priority-huge": b'{"prompt": "x", "priority": ' + b"9" * 5000 + b"}",
    "nan": b'{"prompt": "x", "temperature": NaN}',
    "lone-surrogate": b'{"prompt": "\\ud800 alone"}',
    "id-dotdot": b'{"id": "..", "prompt": "x"}',
    "tenant-too-long": json.dumps({"prompt": "x", "tenant": "\U0001d518" * 17}).encode(),
    "unknown-field": b'{"prompt": "x", "colour": "blue"}',
    "huge-body": json.dumps({"prompt": "x" * (3 * 1024 * 1024)}).encode(),
    "deep-list": b"[" * DEEP + b"]" * DEEP,
    "deep-metadata": (b'{"prompt": "x", "metadata": ' + b'{"a": ' * 200 + b"1"
                      + b"}" * 200 + b"}"),
}
# Any AMQP client can publish to the internal exchanges too.
INTERNAL_POISON: dict[str, tuple[str, str, bytes]] = {
    "router-not-json": ("tasks", "task", b"\x00\x01 garbage"),
    "router-wrong-types": ("tasks", "task", b'{"messages": 7}'),
    "worker-not-json": ("work", "cheap", b"<xml/>"),
    "worker-deep": ("work", "cheap", b"[" * DEEP + b"]" * DEEP),
}


def _publish_poison(run: FaultPipeline) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(run.rabbit.url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        cases = [(name, "submit", "task", body) for name, body in SUBMIT_POISON.items()]
        cases += [(name, *target) for name, target in INTERNAL_POISON.items()]
        for name, exchange, key, body in cases:
            channel.basic_publish(f"{run.ns}.{exchange}", key, body, pika.BasicProperties(
                content_type="application/json", delivery_mode=2,
                headers={CASE_HEADER: name}), mandatory=True)
    finally:
        connection.close()


def test_poison_messages_are_rejected_with_a_reason(faulty: FaultPipeline) -> None:
    load = Load(faulty, "poison", n_http=100, n_amqp=100, seconds=3).start()
    load.wait_accepted(0.3)
    _publish_poison(faulty)
    outcome = settle(faulty, load)
    expected = set(SUBMIT_POISON) | set(INTERNAL_POISON)
    parked: dict[str, str] = {}

    def all_parked() -> bool:
        for headers, _ in faulty.drain(f"{faulty.ns}.rejected"):
            case = headers.get(CASE_HEADER)
            case = case.decode() if isinstance(case, bytes) else str(case)
            reason = headers.get(ERROR_HEADER)
            parked[case] = reason.decode() if isinstance(reason, bytes) else str(reason)
        return expected <= set(parked)

    try:
        wait_until(all_parked, 30, "every poison message in rejected", interval=0.3)
    finally:
        line = (f"scenario=poison-cases cases={len(expected)} rejected={len(parked)} "
                f"missing={sorted(expected - set(parked))}")
        FIGURES.append(line)
        print(line)
    assert set(parked) == expected, f"unexpected rejects: {set(parked) - expected}"
    assert all(reason and reason != "None" for reason in parked.values()), parked
    # Refused at the door for what they are, not after a crash loop.
    crashed = {case: reason for case, reason in parked.items() if "handler failed" in reason}
    assert not crashed, crashed
    check(outcome, extra_calls=0)
    for name in ("ingest", "intake", "router", "recorder", "worker-1", "worker-2"):
        assert faulty.stack.alive(name), f"{name} died"
    assert faulty.queue_depth(f"{faulty.ns}.dead") == 0
