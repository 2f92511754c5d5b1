"""The provider's JSONL, both ways: a task as a request line, an output or error line as an
outcome, and an answered line as the task's Result (at the batch price). Pure functions."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from services.batcher.plan import Claim, custom_id_of
from services.common.cache import CachedAnswer, cache_key, cacheable
from services.common.config import AgentqConfig, ModelEntry
from services.common.models import Latency, Result, Task, Usage
from services.common.pricing import batch_cost
from services.common.results import answered, from_cache
from services.common.topology import Names
from services.worker.provider import call_options

log = logging.getLogger(__name__)
CHAT_URL = "/v1/chat/completions"


def request_line(task: Task, entry: ModelEntry, config: AgentqConfig) -> dict[str, Any]:
    """Return a task's line of a batch input file: the body the live call would send."""
    body = {"model": entry.model, "messages": [m.model_dump() for m in task.messages],
            **call_options(config.providers[entry.provider], entry, task)}
    return {"custom_id": custom_id_of(task), "method": "POST", "url": CHAT_URL, "body": body}


def line_keys(names: Names, claims: Iterable[Claim],
              tasks: Mapping[str, Task]) -> dict[str, str | None]:
    """Key each claim's request as the workers' in-flight dedup does (its exact-cache key
    under the routed tier; None when the task is not cacheable, so it has a line of its own)."""
    keys: dict[str, str | None] = {}
    for claim in claims:
        task = tasks.get(claim.custom_id)
        keys[claim.custom_id] = (cache_key(names, task, claim.tier)
                                 if task is not None and cacheable(task) else None)
    return keys


def jsonl(lines: Iterable[dict[str, Any]]) -> bytes:
    """Return the lines as one JSONL file."""
    return "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines).encode()


@dataclass(frozen=True)
class LineAnswer:
    """A line of the output file answered with a 200."""

    custom_id: str
    output: str
    model: str
    usage: Usage


@dataclass(frozen=True)
class LineError:
    """A line of the output or error file that did not answer: it goes live."""

    custom_id: str
    code: str
    message: str


def read_lines(text: str) -> list[LineAnswer | LineError]:
    """Read an output or error file; a line that cannot be read is logged and skipped (its
    claim has no answer, so it goes live)."""
    outcomes: list[LineAnswer | LineError] = []
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            outcomes.append(read_line(json.loads(raw)))
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            log.warning("batch result line %d unreadable (%s): %.200s", number, exc, raw)
    return outcomes


def read_line(line: dict[str, Any]) -> LineAnswer | LineError:
    """Read one result line: `{"custom_id", "response": {"status_code", "body"}, "error"}`."""
    custom_id = line["custom_id"]
    if not isinstance(custom_id, str):
        raise TypeError("custom_id is not a string")
    response = line.get("response") or {}
    error = line.get("error") or {}
    body = response.get("body") or {}
    if response.get("status_code") == 200 and not error:
        usage = body.get("usage") or {}
        return LineAnswer(custom_id, body["choices"][0]["message"].get("content") or "",
                          body.get("model", ""),
                          Usage(prompt_tokens=int(usage.get("prompt_tokens", 0)),
                                completion_tokens=int(usage.get("completion_tokens", 0))))
    detail = error or body.get("error") or {}
    code = detail.get("code") or f"http_{response.get('status_code', 'none')}"
    return LineError(custom_id, str(code), str(detail.get("message", "")))


def batch_result(task: Task, answer: LineAnswer, *, entry: ModelEntry, tier: str,
                 route_reason: str, batch_id: str, config: AgentqConfig,
                 batch_seconds: float, now: float) -> Result:
    """Build the Result of an answered line: priced at the batch price, with its batch id.

    The time the batch ran counts as the call (`llm`), everything before it as queueing.
    """
    total_ms = max(0.0, (now - (task.submitted_at or now)) * 1000)
    llm_ms = min(total_ms, max(0.0, batch_seconds * 1000))
    usage = answer.usage
    result = answered(task, tier=tier, route_reason=route_reason,
                      latency=Latency(queue=total_ms - llm_ms, llm=llm_ms, total=total_ms),
                      output=answer.output, model=answer.model or entry.model, usage=usage,
                      cost_usd=batch_cost(config, entry, usage), config=config, attempts=1)
    return result.model_copy(update={"batch_id": batch_id})


def twin_result(task: Task, paid: Result, *, route_reason: str, config: AgentqConfig,
                now: float) -> Result:
    """Build the Result of a twin answered by another task's line: as a live twin's dedup
    answer, it cost nothing (`paid` carries the line's cost), with the batch that answered."""
    answer = CachedAnswer(output=paid.output, model=paid.model, tier=paid.tier,
                          usage=paid.usage, task_id=paid.task_id)
    result = from_cache(task, answer, config, cache="exact",
                        route_reason=f"{route_reason};dedup", now=now)
    return result.model_copy(update={"batch_id": paid.batch_id})
