"""`agentq submit "prompt"`: submit a task over HTTP, wait for its result, print it."""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from services.common.settings import Settings

TERMINAL = ("succeeded", "failed")


def _request(method: str, url: str, body: Any = None, api_key: str = "") -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def main(argv: list[str] | None = None) -> int:
    settings = Settings()
    parser = argparse.ArgumentParser(prog="agentq submit")
    parser.add_argument("prompt")
    parser.add_argument("--kind", default="chat")
    parser.add_argument("--tier", default=None)
    parser.add_argument("--tenant", default=None,
                        help="default: the API key's tenant, else 'default'")
    parser.add_argument("--max-tokens", type=int, default=None)
    parser.add_argument("--url", default=f"http://127.0.0.1:{settings.ingest_port}")
    parser.add_argument("--api-key", default=next(iter(settings.api_key_set), ""))
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--no-wait", action="store_true")
    args = parser.parse_args(argv)

    task: dict[str, Any] = {"prompt": args.prompt, "kind": args.kind}
    if args.tenant:
        task["tenant"] = args.tenant
    if args.tier:
        task["tier"] = args.tier
    if args.max_tokens:
        task["max_tokens"] = args.max_tokens
    try:
        status, body = _request("POST", f"{args.url}/v1/tasks", task, args.api_key)
    except (urllib.error.URLError, OSError) as exc:
        print(f"agentq submit: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    if status != 202:
        print(json.dumps(body, indent=2), file=sys.stderr)
        return 1
    task_id = body["id"]
    # Ids are per tenant: name it, or an admin key could find another tenant's task too.
    where = f"?tenant={urllib.parse.quote(args.tenant)}" if args.tenant else ""
    if args.no_wait:
        print(task_id)
        return 0
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        status, body = _request("GET", f"{args.url}/v1/tasks/{task_id}{where}",
                                api_key=args.api_key)
        if status == 200 and body.get("status") in TERMINAL:
            print(json.dumps(body.get("result") or body, indent=2))
            return 0 if body["status"] == "succeeded" else 1
        time.sleep(0.2)
    print(f"agentq submit: task {task_id} not finished after {args.timeout:.0f}s",
          file=sys.stderr)
    return 1
