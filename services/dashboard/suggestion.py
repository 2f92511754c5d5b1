"""Ask the autoscaling policy, when it is installed, how many workers it would run."""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

log = logging.getLogger(__name__)
POLICY_MODULE = "services.autoscale.policy"


@cache
def _policy() -> Callable[..., Any] | None:
    try:
        module = importlib.import_module(POLICY_MODULE)
    except ImportError:
        return None
    function = getattr(module, "suggest_workers", None)
    return function if callable(function) else None


def suggest(inputs: Mapping[str, Any]) -> int | None:
    """Return the policy's worker count for these inputs, or None (no policy, or it failed).

    The policy is owned elsewhere, so it is called with the inputs its signature names
    (backlog, arrival_per_min, throughput_per_min, workers, concurrency, ...).
    """
    policy = _policy()
    if policy is None:
        return None
    try:
        params = inspect.signature(policy).parameters
        takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        kwargs = {k: v for k, v in inputs.items() if takes_all or k in params}
        answer = policy(**kwargs)
        count = getattr(answer, "workers", answer)  # a number, or a decision with .workers
        return int(count)
    except Exception:  # the card is a hint: a policy fault must not break the page
        log.debug("suggest_workers failed", exc_info=True)
        return None
