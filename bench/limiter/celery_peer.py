"""The peer `agentq bench limiter` compares against: Celery with a per-task `rate_limit`.

This is how users throttle LLM calls in Celery today: the provider's limit divided by the
number of worker processes as the task's `rate_limit` ("200/m" for 1,200 RPM over 6 workers),
the `openai` SDK with its own retries off, and Celery's `autoretry_for` with exponential
backoff on a 429. Each worker is started by the benchmark as

    python -m celery -A bench.limiter.celery_peer worker --pool gevent --concurrency 50 ...

and configured by environment variables (the benchmark sets them):

    BENCH_CELERY_QUEUE   queue (and exchange, and routing key) of the tasks
    BENCH_MOCK_URL       the simulated provider's OpenAI base URL (…/v1)
    BENCH_RATE_LIMIT     the task's rate_limit, e.g. "200/m"
    BENCH_REDIS_URL      where each finished call is recorded for the benchmark
    BENCH_SERVED_KEY     the Redis list of records: [unix time, tenant, tokens, status]

gevent is the pool Celery's docs recommend for I/O-bound tasks, and the one whose rate limit
holds here: with `--pool threads` a rate-limited task ran at most once a second per worker
(Celery 5.7: 1.0 task/s at "200/m", with worker_timer_precision 1, 0.1, 0.05 or 0.01), which
would cost Celery two thirds of its RPM for a reason unrelated to rate limiting.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import openai
import redis
from celery import Celery, Task

from bench.celery_conf import peer_conf, provider_client

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"
TASK_NAME = "bench.call_llm"
MODEL = "gpt-4o-mini"
MAX_RETRIES = 5  # Celery's autoretry: 1 s, 2 s, 4 s... with jitter, then the task fails

QUEUE = os.environ.get("BENCH_CELERY_QUEUE", "agentq_bench.celery")
RATE_LIMIT = os.environ.get("BENCH_RATE_LIMIT") or None


def make_app(queue: str) -> Celery:
    """Return a Celery app whose tasks go to `queue` only (exchange and key of that name)."""
    app = Celery("agentq_bench_peer", broker=AMQP_URL)
    app.conf.update(peer_conf(queue), task_ignore_result=True)
    return app


app = make_app(QUEUE)
_recorder: redis.Redis | None = None


def _record(tenant: str, tokens: int, status: str) -> None:
    global _recorder
    if _recorder is None:
        _recorder = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    _recorder.rpush(os.environ["BENCH_SERVED_KEY"],
                    json.dumps([time.time(), tenant, tokens, status]))


class _Recorded(Task):  # type: ignore[misc]
    """Record a task that failed for good (retries exhausted) for the benchmark."""

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any,
                   einfo: Any) -> None:
        _record(str(args[0]), 0, "failed")


@app.task(bind=True, base=_Recorded, name=TASK_NAME, rate_limit=RATE_LIMIT,
          autoretry_for=(openai.RateLimitError,), retry_backoff=True, retry_backoff_max=60,
          retry_jitter=True, max_retries=MAX_RETRIES)
def call_llm(self: Task, tenant: str, messages: list[dict[str, str]], max_tokens: int) -> None:
    """Call the provider once; a 429 raises RateLimitError, which Celery retries later."""
    response = provider_client(max_retries=0).chat.completions.create(
        model=MODEL, messages=messages, max_tokens=max_tokens,  # type: ignore[arg-type]
        temperature=0)
    usage = response.usage
    # Counted as the pool's TPM counts it (prompt + max_tokens reserved), like agentq's.
    _record(tenant, (usage.prompt_tokens + max(usage.completion_tokens, max_tokens))
            if usage else 0, "succeeded")
