"""Prometheus metrics of the router."""

from __future__ import annotations

from prometheus_client import Counter

ROUTED = Counter("agentq_router_routed_total", "Tasks routed, by tier and cache outcome",
                 ["tier", "cache"])
