"""The shared rate limiter: one RPM/TPM budget per provider pool for every worker, via Redis."""

from services.worker.limiter.headers import (
    limits_from_headers,
    parse_duration,
    remaining_from_headers,
    retry_after_from_headers,
)
from services.worker.limiter.limiter import Grant, SharedLimiter
from services.worker.limiter.pools import (
    LimiterError,
    LimiterOptions,
    PoolLimits,
    TenantShare,
    UnknownPool,
    model_pool,
    pools_from_config,
    tenants_from_config,
)

__all__ = [
    "Grant",
    "LimiterError",
    "LimiterOptions",
    "PoolLimits",
    "SharedLimiter",
    "TenantShare",
    "UnknownPool",
    "limits_from_headers",
    "model_pool",
    "parse_duration",
    "pools_from_config",
    "remaining_from_headers",
    "retry_after_from_headers",
    "tenants_from_config",
]
