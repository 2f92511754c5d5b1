"""Read a provider's rate-limit headers: how long to wait after a 429, what remains, the limits.

The one parser of provider hints: `retry-after` (seconds or an HTTP date), `retry-after-ms`,
OpenAI's `x-ratelimit-*` (resets as Go durations), and the same names prefixed with
`llm_provider-`, which is how LiteLLM's proxy passes the upstream provider's headers through.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

# OpenAI's reset format is a Go duration: "1s", "6m0s", "120ms", "0.5s", "1h2m3.5s".
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|ns|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
KINDS = ("requests", "tokens")
# LiteLLM's proxy forwards the upstream provider's headers under this prefix.
PASSTHROUGH_PREFIX = "llm_provider-"


def _number(text: str | None) -> float | None:
    """Return a finite, non-negative number from a header value, else None."""
    if text is None:
        return None
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return max(0.0, value) if math.isfinite(value) else None


def parse_duration(text: str | None) -> float | None:
    """Return seconds from a Go-style duration ("6m0s") or a bare number of seconds."""
    if text is None:
        return None
    text = text.strip().lower()
    bare = _number(text)
    if bare is not None or not text:
        return bare
    total, position = 0.0, 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            return None
        total += float(match[1]) * _UNIT_S[match[2]]
        position = match.end()
    return total if position == len(text) else None


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    """Return the headers by lower-case name; a passed-through upstream header fills in for
    the same name the proxy did not set itself."""
    own: dict[str, str] = {}
    upstream: dict[str, str] = {}
    for key, value in headers.items():
        name = key.lower()
        if name.startswith(PASSTHROUGH_PREFIX):
            upstream[name.removeprefix(PASSTHROUGH_PREFIX)] = value
        else:
            own[name] = value
    return {**upstream, **own}


def http_date_delay(text: str, now: float) -> float | None:
    """Return the seconds from `now` to an HTTP date ("Wed, 21 Oct 2015 07:28:05 GMT")."""
    try:
        when = parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when - now)


def retry_after_from_headers(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Return the seconds a 429 asks to wait, or None if the headers do not say."""
    h = _lower(headers)
    millis = _number(h.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000
    if "retry-after" in h:
        seconds = _number(h["retry-after"])
        if seconds is None:
            seconds = http_date_delay(h["retry-after"], time.time() if now is None else now)
        if seconds is not None:
            return seconds
    resets = {kind: parse_duration(h.get(f"x-ratelimit-reset-{kind}")) for kind in KINDS}
    # A reset header says when that limit is whole again, which for tokens can be minutes;
    # wait for the exhausted limit if one is known to be, else for the soonest reset.
    exhausted: list[float] = []
    for kind, reset in resets.items():
        left = _number(h.get(f"x-ratelimit-remaining-{kind}"))
        if reset is not None and left is not None and left < 1:
            exhausted.append(reset)
    if exhausted:
        return max(exhausted)
    known = [reset for reset in resets.values() if reset is not None]
    return min(known) if known else None


def remaining_from_headers(headers: Mapping[str, str]) -> tuple[float | None, float | None]:
    """Return the requests and tokens the provider says remain (None where not given)."""
    h = _lower(headers)
    requests, tokens = (_number(h.get(f"x-ratelimit-remaining-{kind}")) for kind in KINDS)
    return requests, tokens


def limits_from_headers(headers: Mapping[str, str]) -> tuple[int | None, int | None]:
    """Return the requests and tokens per minute the provider says the key is allowed."""
    h = _lower(headers)
    limits = (_number(h.get(f"x-ratelimit-limit-{kind}")) for kind in KINDS)
    requests, tokens = (int(value) if value else None for value in limits)
    return requests, tokens
