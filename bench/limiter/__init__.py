"""`agentq bench limiter`: the shared limiter against Celery's `rate_limit`, side by side.

    agentq bench limiter [--window 60] [--rpm 1200] [--tpm 200000] [--workers 6]
                         [--concurrency 50] [--systems agentq,celery] ...
    (or: python -m bench.run limiter ...)

Each system gets the same simulated provider (its own mockllm, limits --rpm/--tpm, latency
300 ± 100 ms), the same worker processes and the same backlog, one system after the other:

* agentq: mockllm, ingest, intake, router, recorder and `agentq worker --concurrency N` × W
  in a scratch namespace (tests/stack.py), the pool `mock` configured with the same limits.
* Celery: W `celery worker --pool gevent --concurrency N` on the same RabbitMQ, a task
  calling the provider through the `openai` SDK with rate_limit = RPM ÷ W per worker and
  autoretry with backoff on 429 (bench/limiter/celery_peer.py).

The backlog: three tenants; `flood` keeps 10× as many tasks waiting as each of `light-a`
and `light-b`, with long prompts; the light tenants' prompts are short. Tasks go in,
shuffled, to `<ns>.submit` (agentq) or the Celery queue, and a feeder tops each tenant up
to its part of --queued outstanding tasks (flood 10/12, each light tenant 1/12), so every
tenant stays backlogged the whole time.

Measured over a fixed window (--window s) that opens once the initial burst the full
buckets allow is spent (the provider's buckets, estimated from its /stats, are below 2 %,
or have not been drawn down for 10 s while the provider admitted at least 90 % of its RPM
or TPM): requests and tokens the provider admitted per minute as
% of its limits (tokens as the provider counts them: prompt + max_tokens), 429s it answered,
the limiter's decision latency (agentq: its histogram `agentq_limiter_decision_seconds`,
scraped from every worker's metrics port at both ends of the window; the workers'
`limiter.stats` events as a cross-check), and each tenant's share of the tokens served
(as the pool's TPM counts them, prompt + max_tokens, of the calls that succeeded) against
its max-min fair share, with Jain's fairness index over share ÷ fair share.

Modules: workload (tenants, prompts, the backlog), window (one system's run and window),
measure (the arithmetic of the figures), estimate (the TPM estimate against the provider's
usage), cpu, agentq_run and celery_run (the two systems),
celery_peer (the Celery app its workers run), report (the table), cli (options and main).
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Run `agentq bench limiter` with `argv` (default: the command line)."""
    # Imported here, not above: `celery -A bench.limiter.celery_peer` imports this package,
    # and the peer's workers should load their task only, not the benchmark's driver.
    from bench.limiter.cli import main as run

    return run(argv)
