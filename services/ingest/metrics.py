"""Prometheus metrics of both ingest doors (HTTP and AMQP)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram


@dataclass(frozen=True)
class IngestMetrics:
    """The counters and histogram one ingest process exports."""

    registry: CollectorRegistry
    accepted: Counter
    rejected: Counter
    duplicates: Counter
    request_seconds: Histogram


def make_metrics(registry: CollectorRegistry) -> IngestMetrics:
    """Register ingest's metrics in `registry` (one registry per app keeps tests independent)."""
    return IngestMetrics(
        registry=registry,
        accepted=Counter("tasks_accepted", "Tasks accepted and queued, by door",
                         ["door"], registry=registry),
        rejected=Counter("tasks_rejected",
                         "Submissions refused, by door and reason (HTTP status or 'invalid')",
                         ["door", "reason"], registry=registry),
        duplicates=Counter("tasks_duplicate", "Resubmitted task ids answered without queueing",
                           ["door"], registry=registry),
        request_seconds=Histogram("ingest_http_request_duration_seconds",
                                  "HTTP request latency of ingest",
                                  ["method", "endpoint", "status"], registry=registry),
    )
