"""Dead letters read and replayed (services.common.dead_letters, `agentq dlq`): the rules
alone, then against the real RabbitMQ and results store of the test's namespace."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pika
import pytest

from services.cli import main as agentq
from services.common.dead_letters import (
    DeadLetterQueue,
    Filter,
    parse,
    reason_of,
)
from services.common.models import ErrorInfo, Result, Task
from services.common.settings import Settings
from services.common.store import get_task, insert_task, make_engine, record_results
from services.common.topology import ERROR_HEADER, Names
from tests.conftest import Rabbit


def _task(tenant: str = "acme", **fields: object) -> Task:
    return Task.model_validate({"id": f"t-{uuid.uuid4().hex[:8]}", "tenant": tenant,
                                "prompt": "hello", **fields})


def test_the_reason_is_agentq_s_own_else_the_broker_s() -> None:
    assert reason_of({ERROR_HEADER: b"provider_unavailable: 503"}) == \
        "provider_unavailable: 503"
    death = {"reason": b"delivery_limit", "queue": b"agentq.work.cheap", "count": 20}
    assert reason_of({"x-death": [death]}) == "delivery_limit in agentq.work.cheap"
    assert reason_of({}) == "dead-lettered (no reason given)"


def test_filters_match_reason_in_any_case_tenant_and_id() -> None:
    task = _task("acme")
    letter = parse(0, task.model_dump_json().encode(),
                   pika.BasicProperties(headers={ERROR_HEADER: "Provider_Unavailable: 503"}),
                   "cheap.provider_unavailable")
    assert Filter().matches(letter)
    assert Filter(reason="provider_unavailable", tenant="acme").matches(letter)
    assert not Filter(reason="timeout").matches(letter)
    assert not Filter(tenant="beta").matches(letter)
    assert Filter(task_id=task.id).matches(letter) and not Filter(task_id="x").matches(letter)
    unreadable = parse(1, b"not json", pika.BasicProperties(headers={}), "cheap")
    assert unreadable.task is None and not Filter(tenant="acme").matches(unreadable)


def test_a_letter_s_fingerprint_names_the_letter_not_the_task() -> None:
    task = _task()
    body = task.model_dump_json().encode()
    first = parse(0, body, pika.BasicProperties(headers={ERROR_HEADER: "a"}), "cheap.a")
    again = parse(5, body, pika.BasicProperties(headers={ERROR_HEADER: "a"}), "cheap.a")
    other = parse(0, body, pika.BasicProperties(headers={ERROR_HEADER: "b"}), "cheap.b")
    assert first.fingerprint == again.fingerprint != other.fingerprint


# --- against the broker and the store ---------------------------------------------------------

def _fail(settings: Settings, task: Task, code: str = "provider_unavailable") -> None:
    """Store the task and its failed result, as ingest and the recorder do."""
    engine = make_engine(settings.database_url)
    insert_task(engine, task)
    record_results(engine, [Result(task_id=task.id, tenant=task.tenant, status="failed",
                                   error=ErrorInfo(code=code, message="gave up"))])


def _bury(rabbit: Rabbit, names: Names, task: Task, reason: str,
          broker: bool = False) -> None:
    """Dead-letter a task as the worker does (its reason in x-agentq-error), or as the broker
    does (x-death)."""
    headers: dict[str, object] = {ERROR_HEADER: reason}
    if broker:
        headers = {"x-death": [{"reason": "delivery_limit", "queue": names.work_queue("cheap"),
                                "count": 20, "time": dt.datetime(2026, 12, 1, 12, 0)}]}
    rabbit.publish(names.dlx, f"cheap.{reason.split(':')[0]}", task.model_dump_json(),
                   headers=headers)


def _drain_tasks(rabbit: Rabbit, names: Names) -> list[str]:
    ids = []
    while rabbit.count(names.tasks):
        ids.append(json.loads(rabbit.get(names.tasks).body)["id"])
    return ids


def test_list_shows_every_letter_and_leaves_the_queue_as_it_was(
        settings: Settings, names: Names, rabbit: Rabbit) -> None:
    a, b, c = _task("acme"), _task("beta"), _task("acme")
    _bury(rabbit, names, a, "provider_unavailable: 503 x4")
    _bury(rabbit, names, b, "timeout: no answer in 120 s")
    _bury(rabbit, names, c, "", broker=True)
    rabbit.publish(names.dlx, "cheap.x", "{not a task", headers={ERROR_HEADER: "bad"})
    queue = DeadLetterQueue(settings.amqp_url, names)

    letters = queue.list()
    assert [letter.task_id for letter in letters] == [a.id, b.id, c.id, "?"]
    assert letters[2].reason == f"delivery_limit in {names.work_queue('cheap')}"
    assert letters[2].dead_at == dt.datetime(2026, 12, 1, 12, 0).timestamp()
    assert [x.task_id for x in queue.list(Filter(tenant="acme"))] == [a.id, c.id]
    assert [x.task_id for x in queue.list(Filter(reason="TIMEOUT"))] == [b.id]
    assert rabbit.count(names.dead) == 4  # all of them back, in order
    assert [x.task_id for x in queue.list()] == [a.id, b.id, c.id, "?"]


def test_replay_sends_matching_tasks_back_once_and_keeps_the_rest(
        settings: Settings, names: Names, rabbit: Rabbit) -> None:
    engine = make_engine(settings.database_url)
    doomed, slow, other, done = _task("acme"), _task("acme"), _task("beta"), _task("acme")
    for task in (doomed, slow, other, done):
        _fail(settings, task)
    record_results(engine, [Result(task_id=done.id, tenant="acme", status="succeeded",
                                   output="fine")])
    _bury(rabbit, names, doomed, "provider_unavailable: 503")
    _bury(rabbit, names, doomed, "provider_unavailable: 503 (again)")  # a second letter
    _bury(rabbit, names, slow, "timeout: 120 s")
    _bury(rabbit, names, other, "provider_unavailable: 503")
    _bury(rabbit, names, done, "provider_unavailable: 503")
    rabbit.publish(names.dlx, "cheap.x", "{not a task", headers={ERROR_HEADER: "bad"})
    queue = DeadLetterQueue(settings.amqp_url, names)

    report = queue.replay(engine, Filter(reason="provider_unavailable", tenant="acme"))
    assert report.replayed == [doomed.id]
    assert report.duplicates == [doomed.id] and report.succeeded == [done.id]
    assert (report.unreadable, report.unmatched) == (1, 2)
    assert _drain_tasks(rabbit, names) == [doomed.id]
    row = get_task(engine, "acme", doomed.id)
    assert row is not None and (row["status"], row["error_code"]) == ("queued", "replayed")
    assert get_task(engine, "acme", done.id)["status"] == "succeeded"  # not run again
    assert [x.task_id for x in queue.list()] == [slow.id, other.id, "?"]

    # Again: nothing of acme's left to replay; the letters kept stay.
    again = queue.replay(engine, Filter(reason="provider_unavailable", tenant="acme"))
    assert again.replayed == [] and _drain_tasks(rabbit, names) == []
    # A letter that names a task the store does not know is stored and replayed.
    stray = _task("acme")
    _bury(rabbit, names, stray, "provider_unavailable: 503")
    assert queue.replay(engine, Filter(task_id=stray.id)).replayed == [stray.id]
    assert get_task(engine, "acme", stray.id)["status"] == "queued"
    assert _drain_tasks(rabbit, names) == [stray.id]


def test_a_letter_whose_replay_died_before_its_ack_is_sent_again(
        settings: Settings, names: Names, rabbit: Rabbit) -> None:
    from services.common.store import reopen_for_replay

    engine = make_engine(settings.database_url)
    task = _task("acme")
    _fail(settings, task)
    _bury(rabbit, names, task, "provider_unavailable: 503")
    queue = DeadLetterQueue(settings.amqp_url, names)
    (letter,) = queue.list()
    # The first replay reopened the row for this letter, then died (no publish, no ack).
    assert reopen_for_replay(engine, task, letter.fingerprint) == "reopened"
    assert queue.replay(engine).replayed == [task.id]
    assert _drain_tasks(rabbit, names) == [task.id]
    assert rabbit.count(names.dead) == 0


def test_a_replayed_task_that_dies_again_can_be_replayed_again(
        settings: Settings, names: Names, rabbit: Rabbit) -> None:
    engine = make_engine(settings.database_url)
    task = _task("acme")
    _fail(settings, task)
    _bury(rabbit, names, task, "provider_unavailable: 503")
    queue = DeadLetterQueue(settings.amqp_url, names)
    assert queue.replay(engine).replayed == [task.id]
    _drain_tasks(rabbit, names)
    _fail(settings, task, "timeout")  # it ran and failed again: a new result, a new letter
    _bury(rabbit, names, task, "timeout: 120 s")
    assert queue.replay(engine).replayed == [task.id]
    assert _drain_tasks(rabbit, names) == [task.id]


def test_the_cli_lists_shows_and_replays(settings: Settings, names: Names, rabbit: Rabbit,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    task, other = _task("acme"), _task("beta")
    for t in (task, other):
        _fail(settings, t)
        _bury(rabbit, names, t, "provider_unavailable: 503")

    assert agentq(["dlq", "list", "--tenant", "acme"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"acme\t{task.id}\t-\tprovider_unavailable: 503"]
    assert "1 dead letter(s)" in err
    assert agentq(["dlq", "list", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["task_id"] for r in rows] == [task.id, other.id]
    assert agentq(["dlq", "show", task.id]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["task"]["messages"] == [{"role": "user", "content": "hello"}]
    assert shown["headers"][ERROR_HEADER] == "provider_unavailable: 503"
    assert agentq(["dlq", "show", "no-such-task"]) == 1
    assert "no dead letter" in capsys.readouterr().err

    assert agentq(["dlq", "replay", "--tenant", "beta"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["replayed"] == 1 and report["task_ids"] == [other.id]
    assert _drain_tasks(rabbit, names) == [other.id]
    assert rabbit.count(names.dead) == 1


def test_the_cli_says_when_the_broker_is_unreachable(
        settings: Settings, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from bench.stack import free_port

    with monkeypatch.context() as patched:  # the namespace's cleanup needs the real URL
        patched.setenv("AGENTQ_AMQP_URL", f"amqp://guest:guest@127.0.0.1:{free_port()}/")
        assert agentq(["dlq", "list"]) == 1
    assert "RabbitMQ unreachable" in capsys.readouterr().err
