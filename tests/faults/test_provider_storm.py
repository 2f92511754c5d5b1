"""The provider storms mid-run: a burst of 429s with retry-after, a burst of 500s, then a
while of random 500s. Every task still ends (most succeed through their retries), and the
provider sees one successful call per task: only the refused calls come on top."""

from __future__ import annotations

import time

import pytest

from bench.stack import wait_until
from tests.faults.harness import FaultPipeline, Load, check, settle


# A provider that advertises its limits (x-ratelimit-*) as the real ones do: well above what
# this pipeline asks for, so the storm's 429s are the only ones.
@pytest.mark.stack(rpm=30_000)
def test_provider_429_storm_and_5xx_bursts(faulty: FaultPipeline) -> None:
    load = Load(faulty, "provider-storm", seconds=6).start()
    load.wait_accepted(0.2)
    # Each burst is used up before the next is ordered (an order replaces the one pending).
    faulty.control(fail_next={"count": 60, "status": 429, "retry_after": 0.5})
    wait_until(lambda: faulty.stats()["rate_limited"] >= 60, 60, "the 429 burst")
    faulty.control(fail_next={"count": 40, "status": 500})
    wait_until(lambda: faulty.stats()["errors"] >= 40, 60, "the 500 burst")
    faulty.control(error_rate=0.2)
    time.sleep(1.5)
    faulty.control(error_rate=0.0)
    outcome = settle(faulty, load, timeout=150)
    refused = outcome.stats["rate_limited"] + outcome.stats["errors"]
    check(outcome, extra_calls=refused, rate_limited=outcome.stats["rate_limited"],
          errors=outcome.stats["errors"])
    assert outcome.duplicates == 0
    assert outcome.count("succeeded") >= 0.95 * outcome.submitted
