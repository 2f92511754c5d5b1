"""The batcher: deferrable tasks out to the provider's Batch API, their answers back as Results.

Receive: each task from `agentq.batch` is claimed in the store (`claims.claim_tasks`, in
batches) and only then acked. Every `[batches] poll_s` a cycle:
1. sends live (to its tier queue) every claim whose deadline is near (`plan.due_claims`);
2. resumes batches left `uploading` by a crash: one the provider has (found by its
   `metadata.agentq_group`) is adopted, one it never created is uploaded, once;
3. polls batches in flight; an ended one becomes Results for its answered lines (batch price,
   `batch_id`, spend counted, cache filled) and live tasks for the rest;
4. puts waiting claims into new batches (`plan.ready_groups`): recorded before the upload.
The decisions are in `plan.py` and `lines.py`; this module only carries them out.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlalchemy import Engine

from services.batcher import claims as store
from services.batcher.lines import (
    LineAnswer,
    batch_result,
    jsonl,
    line_keys,
    read_lines,
    request_line,
    twin_result,
)
from services.batcher.metrics import BATCHES, CLAIMED, LINES
from services.batcher.plan import (
    ENDED_STATUSES,
    Claim,
    affordable,
    batch_end,
    batch_entry,
    due_claims,
    ready_groups,
    reconcile,
    twins,
)
from services.batcher.provider import BatchApi, BatchApiError
from services.common.actions import completed
from services.common.amqp import Broker, IncomingMessage, RejectMessage
from services.common.batching import BatchCommitter
from services.common.budget import SpendLedger
from services.common.cache import CachedAnswer, ExactCache, cacheable
from services.common.clients import open_clients
from services.common.config import AgentqConfig, ModelEntry
from services.common.models import TIERS, Result, Task
from services.common.publishing import emit, publish_result
from services.common.redis_extras import Extras
from services.common.runtime import every, until_stopped
from services.common.settings import METRICS_PORTS, Settings
from services.common.topology import ROUTE_HEADER, declare_topology
from services.common.work_headers import first_attempt

log = logging.getLogger(__name__)
SERVICE = "batcher"
METRICS_PORT = METRICS_PORTS["batcher"]
PREFETCH = 1000
CLAIM_BATCH, CLAIM_WAIT_S = 200, 0.05
PUBLISH_CHUNK = 100  # confirms awaited together when a batch's Results go out
FIND_LOOKBACK_S = 3600.0  # how far before a lost group's creation the provider's list is read
T = TypeVar("T")


class Batcher:
    """Hold deferrable tasks in provider batches and publish what comes back."""

    def __init__(self, bus: Broker, engine: Engine, api: BatchApi, config: AgentqConfig,
                 ledger: SpendLedger | None = None, cache: ExactCache | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.bus = bus
        self.engine = engine
        self.api = api
        self.config = config
        self.ledger = ledger
        self.cache = cache
        self.clock = clock
        self.claims = BatchCommitter[store.NewClaim](
            functools.partial(store.claim_tasks, engine), CLAIM_BATCH, CLAIM_WAIT_S)
        self.extras = Extras(SERVICE)  # a Redis outage skips spend and cache, not the Result

    async def _db(self, call: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(call, self.engine, *args)

    async def handle(self, message: IncomingMessage) -> None:
        """Claim one deferrable task; the message is acked once the claim is committed."""
        try:
            task = Task.model_validate_json(message.body)
        except ValidationError as exc:
            raise RejectMessage(f"not a Task: {exc.errors()[0]['msg']}") from None
        tier = message.routing_key or ""
        if tier not in TIERS:
            raise RejectMessage(f"routing key {tier!r} is not a tier")
        reason = str(message.headers.get(ROUTE_HEADER, ""))
        entry = batch_entry(self.config, tier)
        if entry is None:  # the tier table changed since the router's decision
            await self.send_live(task, tier, reason, "no_batch_api")
            return
        await self.claims.add(store.NewClaim(task, tier, entry, reason))
        CLAIMED.inc()

    async def cycle(self) -> None:
        """Run one round: deadlines, lost uploads, batches in flight, new batches."""
        await self.send_due()
        await self.resume_uploads()
        await self.poll()
        await self.form()

    async def send_due(self) -> None:
        held = await self._db(store.held_claims)
        due = due_claims(held, self.clock(), self.config.batches.live_margin_s)
        await self.go_live(due, "deadline")

    async def go_live(self, claims: Sequence[Claim], why: str) -> None:
        """Send claims to their tier queues, then mark them `live`."""
        if not claims:
            return
        tasks = await self._db(store.tasks_of, claims)
        await self._chunked([self.send_live(tasks[c.custom_id], c.tier, c.route_reason, why)
                             for c in claims if c.custom_id in tasks])
        await self._db(store.set_state, claims, "live")
        LINES.labels(outcome=f"live:{why}").inc(len(claims))
        log.info("%d deferred tasks sent live (%s)", len(claims), why)

    async def send_live(self, task: Task, tier: str, reason: str, why: str) -> None:
        # No longer deferrable: should it come round again (a replay), it goes straight live.
        live = task.model_copy(update={"deferrable": False})
        headers = first_attempt(tier, f"{reason};live:{why}" if reason else f"live:{why}")
        await self.bus.publish(self.bus.names.work, tier, live, priority=task.priority,
                               message_id=task.id, headers=headers)

    async def resume_uploads(self) -> None:
        lost: dict[str, list[store.Group]] = defaultdict(list)
        for group in await self._db(store.open_groups):
            if group.state == "uploading":
                lost[group.provider].append(group)
        for provider, groups in lost.items():
            try:
                found = await self.api.find(provider, [g.group_id for g in groups],
                                            min(g.created_at for g in groups) - FIND_LOOKBACK_S)
            except BatchApiError as exc:
                log.warning("cannot look for lost batches yet: %s", exc)
                continue
            plan = reconcile([g.group_id for g in groups], found)
            for group_id, batch_id in plan.adopt.items():
                log.info("batch %s of group %s found at %s: polling it",
                         batch_id, group_id, provider)
                await self._db(store.group_submitted, group_id, batch_id, None)
                BATCHES.labels(outcome="adopted").inc()
            for group_id in plan.upload:
                members = [c for c in await self._db(store.group_members, group_id)
                           if c.state == "uploading"]
                await self.upload(group_id, members)

    async def form(self) -> None:
        rules = self.config.batches
        waiting = [c for c in await self._db(store.held_claims) if c.state == "waiting"]
        waiting = affordable(waiting, await self.budget_levels({c.tenant for c in waiting}))
        for members in ready_groups(waiting, self.clock(), rules.max_lines, rules.max_age_s):
            group_id = uuid.uuid4().hex
            tasks = await self._db(store.tasks_of, members)
            lines = len(self.lines(members, tasks))
            # Durable before the upload.
            await self._db(store.open_group, group_id, members, lines)
            await self.upload(group_id, members, tasks)

    async def budget_levels(self, tenants: set[str]) -> dict[str, str]:
        """Read each tenant's budget level (`ok` without a ledger or while Redis is down)."""
        levels: dict[str, str] = {}
        for tenant in tenants:
            budget = self.config.tenant(tenant).budget
            if self.ledger is not None and budget is not None:
                levels[tenant] = await self.extras.attempt(
                    "budget", self.ledger.level(tenant, budget), "ok")
        return levels

    def lines(self, members: Sequence[Claim], tasks: Mapping[str, Task]) -> list[Claim]:
        """Return the claims whose requests make the batch's lines: one per distinct request
        (twins share the first one's line)."""
        return [line[0] for line in twins(members, line_keys(self.bus.names, members, tasks))]

    async def upload(self, group_id: str, members: Sequence[Claim],
                     tasks: Mapping[str, Task] | None = None) -> None:
        """Write the group's JSONL, one line per distinct request, upload it and create the
        batch."""
        if not members:
            await self._db(store.end_group, group_id, "empty", 0, 0)
            return
        first = members[0]
        entry = self._entry(first)
        if tasks is None:
            tasks = await self._db(store.tasks_of, members)
        data = jsonl(request_line(tasks[c.custom_id], entry, self.config)
                     for c in self.lines(members, tasks))
        try:
            file_id = await self.api.upload(first.provider, f"agentq-{group_id}.jsonl", data)
            batch_id = await self.api.create(first.provider, file_id, group_id)
        except BatchApiError as exc:
            if not exc.permanent:
                log.warning("batch %s not sent yet (%s); trying again next cycle", group_id, exc)
                return
            log.error("batch %s refused (%s): its %d tasks go live", group_id, exc, len(members))
            await self.go_live(members, "batch_refused")
            await self._db(store.end_group, group_id, "refused", 0, len(members))
            BATCHES.labels(outcome="refused").inc()
            return
        await self._db(store.group_submitted, group_id, batch_id, file_id)
        BATCHES.labels(outcome="submitted").inc()
        log.info("batch %s (%d lines, %s/%s) submitted as %s", group_id, len(members),
                 first.provider, first.model, batch_id)

    async def poll(self) -> None:
        for group in await self._db(store.open_groups):
            if group.state != "submitted" or group.batch_id is None:
                continue
            try:
                status = await self.api.retrieve(group.provider, group.batch_id)
                if status.status not in ENDED_STATUSES:
                    await self._db(store.note_status, group.group_id, status.status)
                    continue
                text = (await self.api.content(group.provider, status.output_file_id) + "\n"
                        + await self.api.content(group.provider, status.error_file_id))
            except BatchApiError as exc:
                log.warning("batch %s not read yet: %s", group.batch_id, exc)
                continue
            await self.finish(group, status.status, text,
                              (status.ended_at or self.clock()) - (group.submitted_at or 0))

    async def finish(self, group: store.Group, status: str, text: str,
                     batch_seconds: float) -> None:
        """Publish the Results of an ended batch's answered lines; send the rest live."""
        answers = {o.custom_id: o for o in read_lines(text) if isinstance(o, LineAnswer)}
        members = await self._db(store.group_members, group.group_id)
        tasks = await self._db(store.tasks_of, members)  # every member's: twins by request
        ended = batch_end(members, answers, line_keys(self.bus.names, members, tasks))
        now = self.clock()
        paid = {c.custom_id: batch_result(
            tasks[c.custom_id], answers[ended.line_of[c.custom_id]], entry=self._entry(c),
            tier=c.tier, route_reason=c.route_reason, batch_id=group.batch_id or "",
            config=self.config, batch_seconds=batch_seconds, now=now) for c in ended.answered}
        copies = [(twin, twin_result(tasks[twin.custom_id], paid[owner.custom_id],
                                     route_reason=twin.route_reason, config=self.config,
                                     now=now)) for twin, owner in ended.twins]
        await self._chunked(
            [self.deliver(c, tasks[c.custom_id], paid[c.custom_id]) for c in ended.answered]
            + [self.deliver(twin, tasks[twin.custom_id], result, paid=False)
               for twin, result in copies])
        done = [*ended.answered, *(twin for twin, _ in copies)]
        await self._db(store.set_state, done, "done")
        LINES.labels(outcome="answered").inc(len(ended.answered))
        LINES.labels(outcome="twin").inc(len(copies))
        BATCHES.labels(outcome=status).inc()
        await self.go_live(ended.live, f"batch_{status}")
        await self._db(store.end_group, group.group_id, status, len(ended.answered),
                       len(ended.live))
        log.info("batch %s %s: %d results (%d of them twins), %d sent live", group.batch_id,
                 status, len(done), len(copies), len(ended.live))

    async def deliver(self, claim: Claim, task: Task, result: Result, paid: bool = True) -> None:
        """Publish a batch Result, count its spend and remember the answer, as a worker does
        (a twin's copy cost nothing, and its answer is remembered already)."""
        await publish_result(self.bus, result, task.reply_to)
        # The worker's completion event, at the batch price; not timed: a batch's run time
        # is no worker's task time (the autoscaler learns that from llm_ms).
        event = completed(result, result.attempts, timed=False, dedup=not paid)
        await emit(self.bus, event.type, SERVICE, tenant=event.tenant, task_id=event.task_id,
                   **event.data)
        if not paid:
            return
        if self.ledger is not None:
            await self.extras.attempt("spend", self.ledger.add(task.tenant, result.cost_usd),
                                      None)
        if self.cache is not None and cacheable(task):
            answer = CachedAnswer(output=result.output, model=result.model, tier=claim.tier,
                                  usage=result.usage, task_id=task.id)
            await self.extras.attempt("cache", self.cache.put(task, claim.tier, answer), None)

    def _entry(self, claim: Claim) -> ModelEntry:
        for entry in self.config.tiers[claim.tier].models:  # type: ignore[index]
            if (entry.provider, entry.model) == (claim.provider, claim.model):
                return entry
        return self.config.primary(claim.tier)  # the table changed: price as its tier now

    @staticmethod
    async def _chunked(calls: Sequence[Awaitable[None]]) -> None:
        for start in range(0, len(calls), PUBLISH_CHUNK):
            await asyncio.gather(*calls[start:start + PUBLISH_CHUNK])


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Run the batcher until `stop` is set."""
    config = settings.tier_table()
    async with open_clients(settings, SERVICE) as clients:
        names = clients.names
        bus = await clients.bus()
        engine = await clients.engine()
        redis = clients.redis()
        api = BatchApi(config)
        clients.closing(api.close)
        await declare_topology(await bus.connection.channel(), names)
        batcher = Batcher(bus, engine, api, config, SpendLedger(redis, names),
                          ExactCache(redis, names, config.cache.exact_ttl_s
                                     or settings.cache_ttl_s))
        claim_stop = asyncio.Event()
        flusher = asyncio.create_task(batcher.claims.run(claim_stop), name="claims flusher")
        cycles = asyncio.create_task(every(config.batches.poll_s, batcher.cycle,
                                           "batch cycle", stop), name="batch cycle")
        try:
            await bus.consume(names.batch, batcher.handle, prefetch=PREFETCH)
            log.info("batcher consuming %s", names.batch)
            await until_stopped(stop, flusher, cycles)
            await bus.stop_consuming(grace_s=10)
        finally:
            claim_stop.set()
            await flusher  # the last claims commit before their messages are acked
            cycles.cancel()
            await asyncio.gather(cycles, return_exceptions=True)
