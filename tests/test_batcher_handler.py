"""The router's and the batcher's handlers on the in-memory broker: where a deferrable task
goes, and what the batcher does with a message it cannot batch."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import pytest
from aio_pika.abc import AbstractChannel

from services.batcher import claims
from services.batcher.lines import LineAnswer, batch_result, twin_result
from services.batcher.plan import Claim
from services.batcher.provider import BatchApi
from services.batcher.service import Batcher
from services.common.amqp import RejectMessage
from services.common.cache import ExactCache
from services.common.config import AgentqConfig, load_config
from services.common.memory_broker import MemoryBroker
from services.common.models import Event, Result, Task, Usage
from services.common.store import make_engine
from services.common.topology import ROUTE_HEADER, Names, declare_topology
from services.dashboard.models import RESOLUTIONS
from services.dashboard.rollup import aggregate
from services.router.service import Router


@dataclass
class Message:
    """The parts of a delivered message the handlers read."""

    body: bytes
    routing_key: str | None = None
    headers: Mapping[str, Any] = field(default_factory=dict)
    exchange: str | None = None
    reply_to: str | None = None
    correlation_id: str | None = None
    message_id: str | None = None


def table(batch: bool = True) -> AgentqConfig:
    raw = load_config(None).model_dump()
    raw["providers"]["mock"]["batch"] = batch
    return AgentqConfig.model_validate(raw)


def on_memory(scenario: Callable[[MemoryBroker], Awaitable[None]]) -> None:
    """Run a scenario on a fresh in-memory broker with agentq's topology declared."""
    async def run() -> None:
        memory = MemoryBroker(Names("batchertest"))
        await declare_topology(cast(AbstractChannel, memory.channel()), memory.names)
        try:
            await scenario(memory)
        finally:
            await memory.close()

    asyncio.run(run())


def body(**fields: Any) -> bytes:
    task = Task(prompt="Classify: late. labels: a, b", kind="classify", cache="off", **fields)
    return task.stamped().model_dump_json().encode()


async def route(broker: MemoryBroker, config: AgentqConfig, **fields: Any) -> None:
    # cache="off": the exact cache (Redis) is never asked.
    router = Router(broker, cast(ExactCache, None), config)
    await router.handle(Message(body(**fields)))


def test_the_router_sends_a_deferrable_task_to_the_batch_queue() -> None:
    async def scenario(broker: MemoryBroker) -> None:
        await route(broker, table(), deferrable=True, deadline="3h")
        deferred = broker.get(broker.names.batch)
        assert deferred is not None and deferred.routing_key == "cheap"
        assert deferred.headers[ROUTE_HEADER] == "kind:classify"
        assert json.loads(deferred.body)["deferrable"] is True
        assert broker.get(broker.names.work_queue("cheap")) is None

    on_memory(scenario)


@pytest.mark.parametrize(("config", "fields"), [
    (table(), {}),
    (table(), {"deferrable": True, "deadline": "10m"}),  # no room for turnaround + margin
    (table(batch=False), {"deferrable": True}),
])
def test_the_router_keeps_the_rest_live(config: AgentqConfig, fields: dict[str, Any]) -> None:
    async def scenario(broker: MemoryBroker) -> None:
        await route(broker, config, **fields)
        assert broker.get(broker.names.batch) is None
        assert broker.get(broker.names.work_queue("cheap")) is not None

    on_memory(scenario)


def test_the_batcher_sends_live_what_its_provider_cannot_batch(tmp_path: Path) -> None:
    async def scenario(broker: MemoryBroker) -> None:
        config = table(batch=False)
        engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
        api = BatchApi(config)
        try:
            batcher = Batcher(broker, engine, api, config)
            await batcher.handle(Message(body(deferrable=True), "cheap",
                                         {ROUTE_HEADER: "kind:classify"}))
            live = broker.get(broker.names.work_queue("cheap"))
            assert live is not None
            assert json.loads(live.body)["deferrable"] is False
            assert live.headers[ROUTE_HEADER] == "kind:classify;live:no_batch_api"
            with pytest.raises(RejectMessage, match="not a tier"):
                await batcher.handle(Message(body(deferrable=True), "gold"))
            with pytest.raises(RejectMessage, match="not a Task"):
                await batcher.handle(Message(b'{"kind": 1}', "cheap"))
        finally:
            await api.close()
            engine.dispose()

    on_memory(scenario)


def test_a_claim_keeps_its_deadline_and_a_task_is_claimed_once(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        config = table()
        entry = config.primary("cheap")
        # Never through ingest: no deadline_at, so its deadline counts from submitted_at.
        raw = Task(id="a", prompt="x", deferrable=True, deadline="1h", submitted_at=1.8e9)
        stamped = Task(id="b", prompt="x", deferrable=True, deadline="2h").stamped()
        claims.claim_tasks(engine, [claims.NewClaim(raw, "cheap", entry, "r1"),
                                    claims.NewClaim(stamped, "cheap", entry, "r1")])
        again = raw.model_copy(update={"submitted_at": 1.9e9})
        claims.claim_tasks(engine, [claims.NewClaim(again, "standard", entry, "r2"),
                                    claims.NewClaim(again, "standard", entry, "r2")])
        held = {c.task_id: c for c in claims.held_claims(engine)}
        assert set(held) == {"a", "b"}
        assert held["a"].deadline_at == 1.8e9 + 3600
        assert (held["a"].tier, held["a"].route_reason) == ("cheap", "r1")  # the first claim
        assert held["b"].deadline_at == stamped.deadline_at
        assert {c.state for c in held.values()} == {"waiting"}
        assert claims.tasks_of(engine, held.values())["default/a"] == raw
    finally:
        engine.dispose()


def test_a_batch_result_and_its_twin_reach_the_rollup_with_the_workers_event(
        tmp_path: Path) -> None:
    """The batcher publishes each Result (the collector's `dashboard.results` copy is what
    the rollup folds) and the worker's `task.completed` event, at the batch price."""
    async def scenario(broker: MemoryBroker) -> None:
        config = table()
        broker.declare_queue("completions")
        broker.bind("completions", broker.names.events, "task.completed")
        engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
        api = BatchApi(config)
        try:
            batcher = Batcher(broker, engine, api, config)
            entry = config.primary("cheap")
            owner, twin = (Task(id=i, tenant="acme", kind="classify", prompt="Classify: late",
                                deferrable=True).stamped() for i in ("paid", "twin"))
            claimed = Claim(tenant="acme", task_id="paid", custom_id="acme/paid",
                            provider="mock", model=entry.model, tier="cheap",
                            state="submitted", claimed_at=0.0)
            answer = LineAnswer("acme/paid", "late", entry.model,
                                Usage(prompt_tokens=1000, completion_tokens=10))
            paid = batch_result(owner, answer, entry=entry, tier="cheap", route_reason="kind",
                                batch_id="batch_1", config=config, batch_seconds=30,
                                now=time.time())
            copy = twin_result(twin, paid, route_reason="kind", config=config, now=time.time())
            await batcher.deliver(claimed, owner, paid)
            await batcher.deliver(replace(claimed, task_id="twin", custom_id="acme/twin"),
                                  twin, copy, paid=False)
            results = [Result.model_validate_json(m.body) for m in
                       iter(lambda: broker.get(broker.names.dashboard_results), None)]
            events = [Event.model_validate_json(m.body) for m in
                      iter(lambda: broker.get("completions"), None)]
        finally:
            await api.close()
            engine.dispose()
        assert [r.task_id for r in results] == ["paid", "twin"]
        price = entry.cost(1000, 10) * 0.5
        assert [(e.task_id, e.service, e.data["cost_usd"], e.data["dedup"]) for e in events] == [
            ("paid", "batcher", pytest.approx(price), False), ("twin", "batcher", 0.0, True)]
        assert all(e.data["llm_ms"] is None for e in events)  # no worker's task time
        rows = [counts for (res, _, tenant, kind, tier, status), counts
                in aggregate(results, events).rollups.items()
                if res == RESOLUTIONS[0] and (tenant, kind, tier) == ("acme", "classify",
                                                                      "cheap")]
        assert [(c.count, c.cache_exact) for c in rows] == [(2, 1)]
        assert rows[0].cost_usd == pytest.approx(price)

    on_memory(scenario)
