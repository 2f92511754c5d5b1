"""The `agentq` command: one verb per service, plus `up`, `submit`, `topology` and `bench`."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from services.common import config_check
from services.common.settings import METRICS_PORTS, Settings

if TYPE_CHECKING:
    from aio_pika.abc import AbstractConnection

    from services.common.topology import Names

__all__ = ["METRICS_PORTS", "main"]  # METRICS_PORTS: the table in Settings, kept importable


def _run_router(args: argparse.Namespace, settings: Settings) -> int:
    from services.common.runtime import run
    from services.router.service import serve

    return run(serve, settings, "router", METRICS_PORTS["router"])


def _run_recorder(args: argparse.Namespace, settings: Settings) -> int:
    from services.common.runtime import run
    from services.ingest.recorder import serve

    return run(serve, settings, "recorder", METRICS_PORTS["recorder"])


def _run_batcher(args: argparse.Namespace, settings: Settings) -> int:
    from services.batcher.service import METRICS_PORT, serve
    from services.common.runtime import run

    return run(serve, settings, "batcher", METRICS_PORT)


def _run_worker(args: argparse.Namespace, settings: Settings) -> int:
    from services.common.runtime import run
    from services.worker.service import serve

    tiers = [t for t in args.tiers.split(",") if t] if args.tiers else None

    async def service(s: Settings, stop: asyncio.Event) -> None:
        grace = args.grace if args.grace is not None else s.llm_timeout_s + 10
        await serve(s, stop, tiers=tiers, concurrency=args.concurrency, grace_s=grace)

    return run(service, settings, "worker", METRICS_PORTS["worker"])


def config_report(settings: Settings, probe: bool = True,
                  skip_probe: tuple[str, ...] = ()) -> config_check.Report:
    """Check the tier table in force for `settings` and the environment."""
    import os

    return config_check.check(
        settings.config_path(), os.environ, openai_api_key=settings.openai_api_key,
        openai_base_url=settings.openai_base_url, mockllm_url=settings.mockllm_url,
        probe_providers=probe, skip_probe=skip_probe)


def _run_config(args: argparse.Namespace, settings: Settings) -> int:
    if args.config:
        settings = settings.model_copy(update={"config": Path(args.config)})
    report = config_report(settings, probe=not args.offline)
    for warning in report.warnings:
        print(f"{warning.line()} (warning)", file=sys.stderr)
    for problem in report.problems:
        print(problem.line(), file=sys.stderr)
    if report.problems:
        print(f"agentq config: {len(report.problems)} problem(s) in {report.source}",
              file=sys.stderr)
        return 1
    print(config_check.summary(report))
    return 0


def _run_topology(args: argparse.Namespace, settings: Settings) -> int:
    import aio_pika

    from services.common.topology import Names, declare_topology

    async def go() -> str:
        connection = await aio_pika.connect(settings.amqp_url)
        async with connection:
            names = Names(settings.namespace)
            if args.delete:
                return await _delete_topology(connection, names, settings.redis_url)
            await declare_topology(await connection.channel(), names)
            return "declared"

    done = asyncio.run(go())
    print(f"topology {done} for namespace {settings.namespace!r}")
    return 0


async def _delete_topology(connection: AbstractConnection, names: Names,
                           redis_url: str) -> str:
    """Delete a namespace's queues and exchanges, and its tenant lanes: those the broker's
    roster names and those registered in Redis (read before the registry itself is
    deleted); return what was done."""
    from redis.exceptions import RedisError

    from services.common.clients import redis_client
    from services.common.models import TIERS
    from services.common.topology import delete_topology
    from services.lanes.registry import registered_lanes, registry_keys
    from services.lanes.roster import roster_lanes

    lanes = await roster_lanes(connection, names)
    redis = redis_client(redis_url)
    try:
        try:
            lanes |= set(await registered_lanes(redis, names, TIERS))
        except (RedisError, OSError) as exc:
            print(f"agentq topology: lane registry unreadable ({exc}); only the tenant lanes "
                  "the broker's roster names are deleted", file=sys.stderr)
        else:
            await redis.delete(*registry_keys(names, TIERS))
        await delete_topology(await connection.channel(), names, lanes=sorted(lanes))
    finally:
        await redis.aclose()
    return f"deleted with {len(lanes)} tenant lanes"


# Verbs whose modules parse their own flags: `agentq VERB ...` runs `module.main([...])`.
DELEGATED = {
    "up": ("services.up", "start the whole stack locally"),
    "ingest": ("services.ingest.serve", "serve the HTTP intake (gunicorn)"),
    "intake": ("services.ingest.intake", "consume tasks published to the submit exchange"),
    "dashboard": ("services.dashboard.serve", "serve the dashboard (gunicorn)"),
    "mockllm": ("services.mockllm.server", "run the simulated OpenAI-compatible provider"),
    "submit": ("services.submit", "submit a task over HTTP and print its result"),
    "autoscale": ("services.autoscale.run", "scale local worker processes on queue depth"),
    "bench": ("bench.run", "run a benchmark: pipeline, limiter, cost, scale, dashboard"),
    "keys": ("services.keys", "make an API key for a tenant: `keys new --tenant T`"),
    "dlq": ("services.dlq", "dead letters: `dlq list|show|replay [--reason R] [--tenant T]`"),
}


def one_line(exc: ValueError) -> str:
    """A settings error as one line: pydantic's own text runs over several."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}"
                         for e in exc.errors(include_url=False))
    return str(exc)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentq", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)

    for verb, (_, text) in DELEGATED.items():
        verbs.add_parser(verb, help=text, add_help=False)

    verbs.add_parser("router", help="route tasks to tiers and answer from the cache") \
        .set_defaults(func=_run_router)
    verbs.add_parser("recorder", help="store results in the results database") \
        .set_defaults(func=_run_recorder)
    verbs.add_parser("batcher", help="send deferrable tasks through the providers' Batch APIs") \
        .set_defaults(func=_run_batcher)
    worker = verbs.add_parser("worker", help="call the provider for queued tasks")
    worker.add_argument("--tiers", default="", help="comma-separated tiers (default: all)")
    worker.add_argument("--concurrency", type=int, default=None)
    worker.add_argument("--grace", type=float, default=None,
                        help="seconds to finish held tasks on SIGTERM "
                             "(default: the LLM timeout plus 10 s)")
    worker.set_defaults(func=_run_worker)
    config = verbs.add_parser("config", help="check the tier table and the environment")
    config_verbs = config.add_subparsers(dest="config_verb", required=True)
    checker = config_verbs.add_parser(
        "check", help="one line per problem (unknown tier, missing price, api_key_env unset, "
                      "base URL not answering); exit 1 on any")
    checker.add_argument("--config", default=None, help="tier table (default: AGENTQ_CONFIG, "
                                                        "else ./agentq.toml, else built-in)")
    checker.add_argument("--offline", action="store_true",
                         help="do not probe the providers' base URLs")
    checker.set_defaults(func=_run_config)
    topology = verbs.add_parser("topology", help="declare every exchange and queue")
    topology.add_argument("--delete", action="store_true", help="delete them instead")
    topology.set_defaults(func=_run_topology)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in DELEGATED:
        delegated: Callable[[list[str]], int] = importlib.import_module(
            DELEGATED[argv[0]][0]).main
        return delegated(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        settings = Settings()
    except ValueError as exc:
        print(f"agentq: bad setting: {one_line(exc)}", file=sys.stderr)
        return 2
    result: int = args.func(args, settings)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
