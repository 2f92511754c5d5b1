"""Prometheus metrics of the shared limiter (one set per process, labelled by pool)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# The metric names are public and kept; the Python names use the glossary's words (a hold of a
# pool is a pause, settling tokens a true-up, utilisation of a bucket its depletion).

GRANTS = Counter("agentq_limiter_grants_total",
                 "Calls the limiter let through", ["pool", "mode"])
GRANTED_TOKENS = Counter("agentq_limiter_granted_tokens_total",
                         "Estimated tokens granted (before the true-up)", ["pool"])
TRUED_UP_TOKENS = Counter("agentq_limiter_settled_tokens_total",
                          "Tokens debited (positive) or credited back after real usage",
                          ["pool", "direction"])
WAIT_SECONDS = Histogram("agentq_limiter_wait_seconds",
                         "Time a call waited for capacity before its grant", ["pool"],
                         buckets=(0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                                  60.0, 120.0))
DECISION_SECONDS = Histogram("agentq_limiter_decision_seconds",
                             "Round trip of one limiter script call to Redis", ["pool"],
                             buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05,
                                      0.1, 0.5))
DENIALS = Counter("agentq_limiter_denials_total",
                  "Script answers that said wait, by reason", ["pool", "reason"])
PAUSES = Counter("agentq_limiter_holds_total", "Pool-wide pauses put in place", ["pool"])
PAUSE_SECONDS = Counter("agentq_limiter_hold_seconds_total",
                        "Seconds of pool-wide pause asked for", ["pool"])
RATE_LIMITED = Counter("agentq_limiter_rate_limited_total",
                       "429 answers received from the provider", ["pool"])
FALLBACK = Gauge("agentq_limiter_fallback_active",
                 "1 while Redis is unreachable and the limiter uses its local buckets")
FALLBACK_EVENTS = Counter("agentq_limiter_fallbacks_total",
                          "Times the limiter lost Redis and fell back to local buckets")
DEPLETION = Gauge("agentq_limiter_utilisation_ratio",
                  "Share of the pool's bucket in use (1 = empty bucket)", ["pool", "limit"])
LIVE_WORKERS = Gauge("agentq_limiter_live_workers",
                     "Workers with a fresh heartbeat, as last seen")
LIMIT = Gauge("agentq_limiter_limit",
              "The limit in force per pool (configured, advertised by the provider, or adapted)",
              ["pool", "limit"])
LOWERED = Counter("agentq_limiter_lowered_total",
                  "Times a provider advertised a lower limit than the tier table configures "
                  "(the lower one wins)", ["pool", "limit"])
ADAPTIVE_DECREASES = Counter("agentq_limiter_adaptive_decreases_total",
                             "Multiplicative decreases of an adaptive pool's limit on a 429",
                             ["pool"])
