"""The backlog both systems get: three tenants, their prompts, and the run's options."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from services.common.tokens import count_messages, count_text

TENANTS = ("flood", "light-a", "light-b")
FLOOD = TENANTS[0]
LIGHT = TENANTS[1:]
BLOCK = 60  # a tenant is topped up once this many of its tasks are done
# Filler words of four letters: one token each by services/common/tokens.py's count.
_WORDS = ("data", "text", "case", "item", "word", "line", "note", "part", "form", "list",
          "page", "site", "unit", "plan", "task", "goal", "step", "rule", "file", "code")


@dataclass(frozen=True)
class Options:
    rpm: int
    tpm: int
    workers: int
    concurrency: int
    window: float
    latency_ms: float
    jitter_ms: float
    flood_prompt: int
    light_prompt: int
    max_tokens: int
    flood_ratio: int
    queued: int
    min_warmup: float
    max_warmup: float
    seed: int
    systems: tuple[str, ...]
    keep_logs: bool = False

    def provider_args(self) -> tuple[str, ...]:
        """Return the `mockllm` arguments (all but --port) of each system's provider."""
        return ("--rpm", str(self.rpm), "--tpm", str(self.tpm), "--latency-ms",
                str(self.latency_ms), "--jitter-ms", str(self.jitter_ms), "--seed",
                str(self.seed))


@dataclass(frozen=True)
class Spec:
    """One task of the backlog, the same for both systems."""

    tenant: str
    messages: list[dict[str, str]]
    max_tokens: int


def prompt(tenant: str, index: int, tokens: int) -> str:
    """Return a user message of exactly `tokens` prompt tokens as the provider counts them."""
    text = f"{tenant} item {index}:"
    # count_messages adds 7 for one user message (primer, overhead, role); each filler word
    # is one token.
    words = max(0, tokens - 7 - count_text(text))
    return text + "".join(" " + _WORDS[(index + i) % len(_WORDS)] for i in range(words))


class Workload:
    """An endless, shuffled stream of tasks: flood_ratio flood tasks per light tenant's one."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.rng = random.Random(opts.seed)
        self.block: list[str] = []
        self.made: Counter[str] = Counter()
        self.cost = {t: self._spec(t, 0).messages for t in TENANTS}

    def _spec(self, tenant: str, index: int) -> Spec:
        size = self.opts.flood_prompt if tenant == FLOOD else self.opts.light_prompt
        return Spec(tenant, [{"role": "user", "content": prompt(tenant, index, size)}],
                    self.opts.max_tokens)

    def take(self, wanted: Mapping[str, int]) -> list[Spec]:
        """Return `wanted[tenant]` new tasks of each tenant, shuffled together."""
        tenants = [t for t, n in wanted.items() for _ in range(n)]
        self.rng.shuffle(tenants)
        out = []
        for tenant in tenants:
            self.made[tenant] += 1
            out.append(self._spec(tenant, self.made[tenant]))
        return out

    def share(self, tenant: str) -> float:
        """Return the tenant's share of the tasks the workload makes."""
        flood = 10 * self.opts.flood_ratio
        return (flood if tenant == FLOOD else 10) / (flood + 10 * len(LIGHT))

    def charged(self, tenant: str) -> int:
        """What the provider's TPM limit charges one call of this tenant."""
        return count_messages(self.cost[tenant]) + self.opts.max_tokens


class Backlog:
    """Keep every tenant backlogged: its share of `size` tasks outstanding, the flood's
    share flood_ratio times each light tenant's."""

    def __init__(self, workload: Workload, size: int) -> None:
        self.workload, self.size = workload, size
        self.published: Counter[str] = Counter()

    def top_up(self, done: Mapping[str, int]) -> list[Spec]:
        """Return the tasks to publish now, given how many of each tenant's are done.

        Each tenant is topped up on its own outstanding tasks, in blocks of at least BLOCK:
        topping up on the broker's total depth would let a tenant run dry while another's
        tasks keep the queue full (the fair share is only defined among tenants that stay
        backlogged), and topping up in the fixed mix would publish the flood's tasks ten at a
        time for each light task served, a load on the machine that is no part of the system
        measured.
        """
        wanted = {}
        for t in TENANTS:
            missing = self.size * self.workload.share(t) - (self.published[t] - done.get(t, 0))
            if missing >= min(BLOCK, self.size * self.workload.share(t) / 2):
                wanted[t] = math.ceil(missing)
        specs = self.workload.take(wanted)
        self.published.update(s.tenant for s in specs)
        return specs
