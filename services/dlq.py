"""`agentq dlq list|show|replay`: look into the dead-letter queue and send tasks back.

    agentq dlq list [--reason R] [--tenant T] [--json]
    agentq dlq show TASK_ID [--tenant T]
    agentq dlq replay [--reason R] [--tenant T] [--id TASK_ID]

`list` and `show` leave the queue as it was; `replay` sends each matching task back to the
router once (see services.common.dead_letters), and prints what it did.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Sequence

import pika.exceptions

from services.cli import one_line
from services.common.dead_letters import DeadLetter, DeadLetterQueue, Filter, letter_detail
from services.common.settings import Settings
from services.common.store import make_engine
from services.common.topology import Names


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentq dlq", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True)
    listing = verbs.add_parser("list", help="the dead letters, one line each")
    show = verbs.add_parser("show", help="everything about a dead task's letters")
    show.add_argument("task_id")
    replay = verbs.add_parser("replay", help="send matching dead tasks back to the router")
    replay.add_argument("--id", dest="task_id", default=None, help="only this task id")
    for command in (listing, replay):
        command.add_argument("--reason", default=None,
                             help="only letters whose reason contains this (any case)")
    for command in (listing, show, replay):
        command.add_argument("--tenant", default=None, help="only this tenant's tasks")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    return parser


def _when(letter: DeadLetter) -> str:
    if letter.dead_at is None:
        return "-"
    return dt.datetime.fromtimestamp(letter.dead_at, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings()
    except ValueError as exc:
        print(f"agentq dlq: bad setting: {one_line(exc)}", file=sys.stderr)
        return 2
    queue = DeadLetterQueue(settings.amqp_url, Names(settings.namespace))
    try:
        if args.verb == "list":
            letters = queue.list(Filter(args.reason, args.tenant))
            for letter in letters:
                if args.json:
                    print(json.dumps(letter.summary()))
                else:
                    print(f"{letter.tenant}\t{letter.task_id}\t{_when(letter)}\t{letter.reason}")
            if not args.json:
                print(f"{len(letters)} dead letter(s)", file=sys.stderr)
            return 0
        if args.verb == "show":
            letters = queue.list(Filter(tenant=args.tenant, task_id=args.task_id))
            if not letters:
                print(f"agentq dlq: no dead letter for task {args.task_id}", file=sys.stderr)
                return 1
            for letter in letters:
                print(json.dumps(letter_detail(letter), indent=2))
            return 0
        report = queue.replay(make_engine(settings.database_url),
                              Filter(args.reason, args.tenant, args.task_id))
        print(json.dumps(report.as_dict()))
        return 0
    except (OSError, pika.exceptions.AMQPError) as exc:
        print(f"agentq dlq: RabbitMQ unreachable at {settings.amqp_url}: {exc}",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
