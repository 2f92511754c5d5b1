"""The provider storms mid-run: a burst of 429s with retry-after, a burst of 500s, then a
while of random 500s. Every task still ends (most succeed through their retries), and the
provider sees one successful call per task: only the refused calls come on top."""

from __future__ import annotations

import time

from tests.faults.harness import FaultPipeline, Load, check, settle


def test_provider_429_storm_and_5xx_bursts(faulty: FaultPipeline) -> None:
    load = Load(faulty, "provider-storm", seconds=6).start()
    load.wait_accepted(0.2)
    faulty.control(fail_next={"count": 80, "status": 429, "retry_after": 0.5})
    load.wait_accepted(0.45)
    faulty.control(fail_next={"count": 40, "status": 500})
    load.wait_accepted(0.7)
    faulty.control(error_rate=0.2)
    time.sleep(1.5)
    faulty.control(error_rate=0.0)
    outcome = settle(faulty, load, timeout=120)
    refused = outcome.stats["rate_limited"] + outcome.stats["errors"]
    check(outcome, extra_calls=refused, rate_limited=outcome.stats["rate_limited"],
          errors=outcome.stats["errors"])
    assert outcome.duplicates == 0
    assert outcome.count("succeeded") >= 0.95 * outcome.submitted
