"""The batcher end to end: `agentq batcher` against mockllm's Batch API, RabbitMQ and the store.

Deferrable tasks are published to `agentq.batch` as the router does; their Results are read
from `agentq.results.store` (no recorder runs) and tasks sent live from `agentq.work.cheap`
(no worker runs). mockllm's `/stats` `batch_lines` counts each custom_id once per batch it
was in, so a count above 1 is a task submitted twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import openai
import pytest

from bench.stack import PIPELINE_SERVICES, ROOT, running_pipeline
from services.batcher import claims
from services.batcher.lines import jsonl, request_line
from services.batcher.provider import GROUP_KEY
from services.common.config import load_config
from services.common.models import Task
from services.common.settings import Settings
from services.common.store import make_engine
from services.common.topology import ROUTE_HEADER, Names
from tests.mock_server import running_mockllm

if TYPE_CHECKING:
    from conftest import Rabbit

MODELS = {"cheap": ("gpt-4o-mini", 0.15, 0.60), "standard": ("gpt-4o", 2.50, 10.00),
          "premium": ("o1", 15.00, 60.00)}
BATCH_RULES = {"max_lines": 250, "max_age_s": 0.3, "poll_s": 0.2, "turnaround_s": 60,
               "live_margin_s": 5}


@pytest.fixture(scope="module")
def mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_mockllm(tmp_path_factory.mktemp("mockllm"), "--batch-completion-s",
                         "0.5") as base_url:
        yield base_url.removesuffix("/v1")


def control(mock: str, **changes: Any) -> None:
    httpx.post(f"{mock}/control", json=changes, timeout=10).raise_for_status()


def stats(mock: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{mock}/stats", timeout=10).json()
    return body


@pytest.fixture
def provider(mock: str) -> str:
    """Return mockllm's root URL with quick, faultless batches and zeroed counts."""
    control(mock, batch_completion_s=0.5, batch_error_rate=0.0, batch_expire=False, seed=0)
    httpx.post(f"{mock}/stats/reset", timeout=10).raise_for_status()
    return mock


def write_table(path: Path, mock: str, **rules: float) -> Path:
    lines = [f'[providers.mock]\nbase_url = "{mock}/v1"\nrpm = 6000\ntpm = 2000000\n']
    for tier, (model, price_in, price_out) in MODELS.items():
        lines.append(f'[tiers.{tier}]\nmodels = [{{ provider = "mock", model = "{model}", '
                     f'input_per_mtok = {price_in}, output_per_mtok = {price_out} }}]\n')
    lines.append("[batches]\n" + "".join(f"{k} = {v}\n"
                                         for k, v in {**BATCH_RULES, **rules}.items()))
    path.write_text("\n".join(lines))
    return path


class Batcher:
    """`agentq batcher` as a child process, started and SIGKILLed at will."""

    def __init__(self, table: Path, log: Path) -> None:
        self.env = {**os.environ, "AGENTQ_CONFIG": str(table), "AGENTQ_METRICS_PORT": "-1"}
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "services.cli", "batcher"],
                                            cwd=ROOT, env=self.env, stdout=out,
                                            stderr=subprocess.STDOUT)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        # Killed, not stopped gracefully: the test is over, and a kill is what it survives.
        if self.process is not None and self.process.poll() is None:
            self.kill()


@pytest.fixture
def batcher_for(settings: Settings, tmp_path: Path, rabbit: Rabbit,
                names: Names) -> Iterator[Callable[..., Batcher]]:
    """Start a batcher with these `[batches]` rules; return once it consumes its queue."""
    started: list[Batcher] = []

    def make(mock: str, **rules: float) -> Batcher:
        batcher = Batcher(write_table(tmp_path / "agentq.toml", mock, **rules),
                          tmp_path / "batcher.log")
        started.append(batcher)
        batcher.start()
        deadline = time.monotonic() + 30
        while (rabbit.depth(names.batch) or (0, 0))[1] < 1:
            assert time.monotonic() < deadline, (tmp_path / "batcher.log").read_text()
            time.sleep(0.1)
        return batcher

    yield make
    for batcher in started:
        batcher.stop()


def deferrable(n: int, prefix: str = "d", **fields: Any) -> list[Task]:
    return [Task(id=f"{prefix}-{i}", tenant="acme", kind="classify", deferrable=True,
                 prompt=f"Classify {prefix} {i}: the parcel never arrived. labels: late, fine",
                 **fields).stamped() for i in range(n)]


def publish(rabbit: Rabbit, names: Names, tasks: list[Task]) -> None:
    for task in tasks:
        rabbit.publish(names.batch, "cheap", task.model_dump_json(),
                       headers={ROUTE_HEADER: "kind:classify"}, message_id=task.id)


def drain(rabbit: Rabbit, queue: str) -> list[dict[str, Any]]:
    """Take every message now ready in `queue`."""
    return [json.loads(rabbit.get(queue, timeout=5).body) for _ in range(rabbit.count(queue))]


def collect(rabbit: Rabbit, names: Names, expected: int, timeout: float,
            ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Gather Results and live tasks until `expected` tasks have one or the other."""
    results: dict[str, dict[str, Any]] = {}
    live: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while len(results.keys() | live.keys()) < expected:
        assert time.monotonic() < deadline, (
            f"{len(results)} results and {len(live)} live of {expected} after {timeout} s")
        results.update((r["task_id"], r) for r in drain(rabbit, names.results_store))
        live.update((t["id"], t) for t in drain(rabbit, names.work_queue("cheap")))
        time.sleep(0.1)
    return results, live


def assert_submitted_once(mock: str, ids: set[str]) -> None:
    counts = stats(mock)["batch_lines"]
    assert set(counts) == {f"acme/{i}" for i in ids}
    assert set(counts.values()) == {1}, {k: v for k, v in counts.items() if v != 1}


def test_a_thousand_deferrable_tasks_come_back_as_results_at_the_batch_price(
        provider: str, batcher_for: Callable[..., Batcher], rabbit: Rabbit,
        names: Names) -> None:
    tasks = deferrable(1000)
    batcher_for(provider)
    publish(rabbit, names, tasks)
    results, live = collect(rabbit, names, 1000, timeout=40)
    assert live == {}
    assert set(results) == {t.id for t in tasks}
    entry = load_config(None).primary("cheap")
    for result in results.values():
        assert result["status"] == "succeeded" and result["batch_id"].startswith("batch")
        usage = result["usage"]
        live_price = entry.cost(usage["prompt_tokens"], usage["completion_tokens"])
        assert result["cost_usd"] == pytest.approx(live_price * 0.5)
    assert len({r["batch_id"] for r in results.values()}) >= 4  # at most 250 lines each
    assert_submitted_once(provider, set(results))


def test_twins_waiting_together_take_one_line_and_each_gets_its_result(
        provider: str, batcher_for: Callable[..., Batcher], rabbit: Rabbit,
        names: Names) -> None:
    twins = [Task(id=f"twin-{i}", tenant="acme", kind="classify", deferrable=True,
                  # spaced and cased apart: the same request once normalised
                  prompt=("Classify: the parcel never arrived." if i % 2
                          else "classify:  the parcel NEVER arrived."),
                  metadata={"n": i}).stamped() for i in range(5)]
    others = deferrable(3, "other")
    batcher_for(provider)
    publish(rabbit, names, [*twins, *others])
    results, live = collect(rabbit, names, 8, timeout=20)
    assert live == {} and set(results) == {t.id for t in [*twins, *others]}
    lines = stats(provider)["batch_lines"]
    assert len(lines) == 4 and set(lines.values()) == {1}  # one line for the five twins
    (line,) = set(lines) - {f"acme/{t.id}" for t in others}
    owner = line.removeprefix("acme/")
    entry = load_config(None).primary("cheap")
    paid = results[owner]
    usage = paid["usage"]
    assert paid["cost_usd"] == pytest.approx(
        entry.cost(usage["prompt_tokens"], usage["completion_tokens"]) * 0.5)
    for twin in twins:
        result = results[twin.id]
        assert result["status"] == "succeeded" and result["output"] == paid["output"]
        assert result["batch_id"] == paid["batch_id"] and result["metadata"] == twin.metadata
        if twin.id != owner:  # charged once, as a live twin's dedup answer
            assert (result["cost_usd"], result["cache"]) == (0.0, "exact")
            assert result["cached_from"] == owner
            assert result["route_reason"] == "kind:classify;dedup"


def in_flight(engine: Any) -> int:
    """Return how many batches the store shows submitted and not ended."""
    return sum(1 for g in claims.open_groups(engine) if g.state == "submitted")


def test_sigkill_mid_poll_and_mid_claim_loses_none_and_submits_none_twice(
        provider: str, batcher_for: Callable[..., Batcher], rabbit: Rabbit, names: Names,
        settings: Settings) -> None:
    control(provider, batch_completion_s=1.5)
    tasks = deferrable(400, "k")
    batcher = batcher_for(provider, max_lines=50)
    engine = make_engine(settings.database_url)
    try:
        publish(rabbit, names, tasks[:200])
        deadline = time.monotonic() + 15
        while in_flight(engine) == 0:  # batches uploaded, their results not yet read
            assert time.monotonic() < deadline
            time.sleep(0.05)
        batcher.kill()  # mid-poll
        assert in_flight(engine) > 0
        batcher.start()
        while (rabbit.depth(names.batch) or (0, 0))[1] < 1:
            time.sleep(0.05)
        publish(rabbit, names, tasks[200:])
        batcher.kill()  # mid-claim: some of these messages claimed, none acked yet perhaps
        batcher.start()
        results, live = collect(rabbit, names, 400, timeout=40)
    finally:
        engine.dispose()
    assert live == {}
    assert set(results) == {t.id for t in tasks}
    assert_submitted_once(provider, set(results))


def test_sigkill_mid_upload_a_restart_adopts_the_batch_created_and_uploads_the_other_once(
        provider: str, batcher_for: Callable[..., Batcher], rabbit: Rabbit, names: Names,
        settings: Settings) -> None:
    """What a SIGKILL mid-upload leaves, made exactly: two batches recorded `uploading`, one
    that the provider created before the kill (its reply never recorded), one never sent."""
    tasks = deferrable(20, "r")
    config = load_config(None)
    entry = config.primary("cheap")
    engine = make_engine(settings.database_url)
    try:
        claims.claim_tasks(engine, [claims.NewClaim(t, "cheap", entry, "kind:classify")
                                    for t in tasks])
        held = claims.held_claims(engine)
        claims.open_group(engine, "g-created", held[:10])
        claims.open_group(engine, "g-never-sent", held[10:])
        by_id = {t.id: t for t in tasks}
        with openai.OpenAI(base_url=f"{provider}/v1", api_key="x", max_retries=0) as sdk:
            data = jsonl(request_line(by_id[c.task_id], entry, config) for c in held[:10])
            uploaded = sdk.files.create(file=("lost.jsonl", data), purpose="batch")
            sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                               completion_window="24h", metadata={GROUP_KEY: "g-created"})
        batcher_for(provider)
        results, live = collect(rabbit, names, 20, timeout=20)
    finally:
        engine.dispose()
    assert live == {} and set(results) == set(by_id)
    assert stats(provider)["batches"] == 2
    assert_submitted_once(provider, set(by_id))


def test_a_task_whose_deadline_nears_is_sent_live_and_its_late_answer_dropped(
        provider: str, batcher_for: Callable[..., Batcher], rabbit: Rabbit,
        names: Names) -> None:
    control(provider, batch_completion_s=4)
    batcher_for(provider)
    (near,) = deferrable(1, "near", deadline="7s")  # live from deadline - 5 s
    (far,) = deferrable(1, "far", deadline="2h")
    publish(rabbit, names, [near, far])
    started = time.monotonic()
    _, live = collect(rabbit, names, 1, timeout=10)
    assert set(live) == {near.id}
    assert 1.0 < time.monotonic() - started < 5.0  # it waited until due ...
    assert stats(provider)["batch_lines"] == {"acme/near-0": 1, "acme/far-0": 1}  # ... in a batch
    sent = live[near.id]
    assert sent["deferrable"] is False  # a replay of it goes straight live
    results, more_live = collect(rabbit, names, 1, timeout=15)
    assert set(results) == {far.id} and more_live == {}  # near's batch answer is not published
    time.sleep(0.5)
    assert rabbit.count(names.results_store) == 0


@pytest.mark.parametrize("fault", ["batch_error_rate", "batch_expire"])
def test_failed_lines_and_an_expired_batch_retry_live(
        provider: str, batcher_for: Callable[..., Batcher], rabbit: Rabbit, names: Names,
        fault: str) -> None:
    control(provider, **({"batch_error_rate": 0.3} if fault == "batch_error_rate"
                         else {"batch_expire": True}))
    tasks = deferrable(100, fault)
    batcher_for(provider)
    publish(rabbit, names, tasks)
    results, live = collect(rabbit, names, 100, timeout=20)
    assert set(results) | set(live) == {t.id for t in tasks}
    assert not set(results) & set(live)
    if fault == "batch_expire":
        assert len(results) == len(live) == 50  # mockllm answers the first half
    else:
        assert 10 < len(live) < 50
    for task in live.values():
        assert task["deferrable"] is False
    assert_submitted_once(provider, {t.id for t in tasks})


def test_through_the_whole_pipeline_deferrable_tasks_are_stored_with_their_batch(
        tmp_path: Path) -> None:
    """HTTP in, router, batcher, recorder: `GET /v1/tasks/<id>` shows the batch's Result."""
    rules = "".join(f"{k} = {v}\n" for k, v in BATCH_RULES.items())
    with running_pipeline(tmp_path, workers=1, services=(*PIPELINE_SERVICES, "batcher"),
                          mock_args=("--batch-completion-s", "0.5"),
                          extra_config=f"\n[batches]\n{rules}") as pipeline:
        deferred = [pipeline.submit({"prompt": f"Classify {i}: late. labels: a, b",
                                     "kind": "classify", "deferrable": True,
                                     "deadline": "2h"}) for i in range(30)]
        live = [pipeline.submit({"prompt": f"Classify {i}: fine. labels: a, b",
                                 "kind": "classify"}) for i in range(5)]
        done = pipeline.wait_done(deferred + live, timeout=60)
        lines = pipeline.stats()["batch_lines"]
    for task_id in deferred:
        result = done[task_id]["result"]
        assert done[task_id]["status"] == "succeeded" and result["batch_id"]
        assert lines[f"default/{task_id}"] == 1
    for task_id in live:
        assert done[task_id]["status"] == "succeeded"
        assert done[task_id]["result"]["batch_id"] is None
        assert f"default/{task_id}" not in lines
