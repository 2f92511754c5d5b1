"""`agentq bench NAME`: run one of the benchmarks in bench/ and print its figures."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

# The benchmarks start processes with the test harness (tests/stack.py) of this checkout.
ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

BENCHMARKS = {
    "pipeline": ("bench.pipeline", "end-to-end tasks/s and latency through the whole pipeline"),
    "limiter": ("bench.limiter", "shared limiter vs Celery rate_limit: RPM use, 429s, fairness"),
    "cost": ("bench.cost", "cost of a mixed workload with tiering and caching vs all-premium"),
    "cache": ("bench.cache", "semantic cache on held-out pairs: precision, recall, latency"),
    "scale": ("bench.scale", "tasks/s for 1, 2, 4 and 8 worker processes"),
    "dashboard": ("bench.dashboard_load", "dashboard page load with 7 days of rollups"),
    "providers": ("bench.providers", "no limits configured vs a provider's real RPM: "
                  "convergence, utilisation, 429s"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in BENCHMARKS:
        print("usage: agentq bench NAME [options]\n")
        for name, (_, text) in BENCHMARKS.items():
            print(f"  {name:<10} {text}")
        return 2
    module = importlib.import_module(BENCHMARKS[argv[0]][0])
    code: int = module.main(argv[1:])
    return code


if __name__ == "__main__":
    raise SystemExit(main())
