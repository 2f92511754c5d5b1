"""The batcher's Prometheus metrics (served on its metrics port, 9107 by default)."""

from __future__ import annotations

from prometheus_client import Counter

CLAIMED = Counter("agentq_batcher_claimed_total", "Deferrable tasks claimed for a batch")
BATCHES = Counter("agentq_batcher_batches_total", "Provider batches, by what became of them",
                  ["outcome"])  # submitted, adopted, refused, or the provider's end status
LINES = Counter("agentq_batcher_lines_total", "Deferred tasks settled, by how",
                ["outcome"])  # answered (a batch Result) or live:<why>
