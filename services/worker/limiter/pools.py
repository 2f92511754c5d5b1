"""What the limiter is configured with: pool limits by name and tenant shares."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import AgentqConfig
from services.worker.limiter.bucket import DEFAULT_BURST_S
from services.worker.limiter.fairness import MAX_MIN_SHARE


class LimiterError(Exception):
    """The limiter was asked for something it is not configured for."""


class UnknownPool(LimiterError, KeyError):
    """No limits are configured under this pool name."""


@dataclass(frozen=True)
class PoolLimits:
    """One pool's budget; 0 means no limit known."""

    rpm: int = 0
    tpm: int = 0
    burst_s: float = DEFAULT_BURST_S  # bucket size, in seconds of the per-minute limit

    def divided(self, workers: int) -> PoolLimits:
        """Return this worker's slice of the pool when it cannot share it through Redis."""
        n = max(1, workers)
        # An unknown limit stays unknown; a known one never rounds down to "unknown" (0).
        return PoolLimits(rpm=self.rpm and max(1, self.rpm // n),
                          tpm=self.tpm and max(1, self.tpm // n), burst_s=self.burst_s)


@dataclass(frozen=True)
class TenantShare:
    """A tenant's weight and guaranteed minimum share of a pool's tokens."""

    weight: float = 1.0
    min_share: float = 0.0

    def __post_init__(self) -> None:
        if self.weight <= 0:
            raise LimiterError(f"tenant weight must be positive, not {self.weight}")
        if not 0 <= self.min_share <= 1:
            raise LimiterError(f"min_share must be within 0..1, not {self.min_share}")

    @property
    def bounded_min_share(self) -> float:
        return min(self.min_share, MAX_MIN_SHARE)


def model_pool(provider: str, model: str) -> str:
    """Name the pool of one model's own limits under a provider key."""
    return f"{provider}/{model}"


def pools_from_config(config: AgentqConfig) -> dict[str, PoolLimits]:
    """Return a pool per provider key, plus one per model that has limits of its own."""
    pools = {name: PoolLimits(rpm=p.rpm, tpm=p.tpm) for name, p in config.providers.items()}
    for tier in config.tiers.values():
        for entry in tier.models:
            if entry.rpm is not None or entry.tpm is not None:
                pools[model_pool(entry.provider, entry.model)] = PoolLimits(
                    rpm=entry.rpm or 0, tpm=entry.tpm or 0)
    return pools


def tenants_from_config(config: AgentqConfig) -> dict[str, TenantShare]:
    """Return the configured tenants' shares; others get weight 1 and no minimum."""
    return {name: TenantShare(weight=t.weight, min_share=t.min_share)
            for name, t in config.tenants.items()}


@dataclass(frozen=True)
class LimiterOptions:
    """Tuning of the limiter; the defaults suit pools of hundreds to thousands of RPM."""

    fair_window_s: float = 1.0  # a tenant may lead by this many seconds of the pool's TPM...
    min_window_tokens: float = 1_000.0  # ...and by at least this many (tokens / weight)
    # A tenant counts as backlogged this long beyond the wait it was last told (its callers
    # come back within that wait), so one that has stopped asking stops holding others back.
    grace_s: float = 0.5
    fair_min_wait_s: float = 0.01
    fair_max_wait_s: float = 1.0
    state_ttl_s: float = 600.0  # idle pools' fairness state expires after this
    redis_timeout_s: float = 0.5  # a slower answer is retried, and makes us ping Redis...
    outage_pings: int = 3  # ...and only this many pings in a row timing out is an outage
    probe_interval_s: float = 1.0  # how often to try Redis again during an outage
    heartbeat_interval_s: float = 2.0
    heartbeat_ttl_s: float = 10.0
    max_sleep_s: float = 5.0  # ask again at least this often, whatever the wait
    jitter: float = 0.1  # spreads waiters' wake-ups so they do not retry in one herd
    timeout_retry_s: float = 0.05  # a caller whose Redis call timed out asks again after this
    default_pause_s: float = 1.0  # a 429 without usable headers pauses the pool this long
    max_pause_s: float = 120.0
