"""The one parser of provider hints: every form of retry-after, reset and limit headers."""

from __future__ import annotations

import pytest

from services.worker.limiter import (
    limits_from_headers,
    parse_duration,
    remaining_from_headers,
    retry_after_from_headers,
)
from services.worker.limiter.headers import http_date_delay

NOW = 1445412480.0  # 2015-10-21 07:28:00 GMT


@pytest.mark.parametrize(("text", "seconds"), [
    ("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("120ms", 0.12), ("1h2m3.5s", 3723.5),
    ("0.5s", 0.5), (".5s", 0.5), ("1m", 60.0), ("2h", 7200.0), ("1.5m", 90.0), ("500us", 5e-4),
    ("250µs", 2.5e-4), ("10ns", 1e-8), (" 3s ", 3.0), ("6M0S", 360.0), ("2", 2.0), ("0", 0.0),
    ("", None), ("soon", None), ("5x", None), ("1s junk", None), ("s", None), ("-1s", None),
    (None, None),
])
def test_reset_durations_in_every_go_form(text: str | None, seconds: float | None) -> None:
    assert parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


@pytest.mark.parametrize(("text", "seconds"), [
    ("Wed, 21 Oct 2015 07:28:05 GMT", 5.0),
    ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # in the past: no wait
    ("Wednesday, 21-Oct-15 07:28:30 GMT", 30.0),  # RFC 850
    ("not a date", None),
])
def test_http_dates(text: str, seconds: float | None) -> None:
    assert http_date_delay(text, NOW) == seconds


@pytest.mark.parametrize(("headers", "seconds"), [
    ({"retry-after": "3"}, 3.0),
    ({"Retry-After": "1.5"}, 1.5),
    ({"retry-after": "Wed, 21 Oct 2015 07:28:05 GMT"}, 5.0),
    ({"retry-after-ms": "250"}, 0.25),
    ({"retry-after-ms": "250", "retry-after": "3"}, 0.25),  # the finer one wins
    ({"retry-after-ms": "soon", "retry-after": "3"}, 3.0),  # an unreadable one is skipped
    ({"retry-after": "-5"}, 0.0),
    ({"retry-after": "inf"}, None),
    ({"x-ratelimit-reset-requests": "1s"}, 1.0),
    ({"x-ratelimit-reset-tokens": "6m0s"}, 360.0),
    ({"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "6m0s",
      "x-ratelimit-remaining-requests": "0", "x-ratelimit-remaining-tokens": "9000"}, 1.0),
    ({"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "20ms",
      "x-ratelimit-remaining-requests": "3", "x-ratelimit-remaining-tokens": "0"}, 0.02),
    ({"x-ratelimit-reset-requests": "2s", "x-ratelimit-reset-tokens": "500ms"}, 0.5),
    ({"x-ratelimit-reset-requests": "1h2m3.5s", "x-ratelimit-remaining-requests": "0"},
     3723.5),
    # LiteLLM's proxy passes the upstream provider's hints through under llm_provider-.
    ({"llm_provider-retry-after": "7"}, 7.0),
    ({"llm_provider-retry-after-ms": "1500"}, 1.5),
    ({"LLM_Provider-Retry-After": "Wed, 21 Oct 2015 07:28:05 GMT"}, 5.0),
    ({"llm_provider-x-ratelimit-reset-requests": "6m0s",
      "llm_provider-x-ratelimit-remaining-requests": "0"}, 360.0),
    ({"retry-after": "2", "llm_provider-retry-after": "9"}, 2.0),  # the proxy's own first
    ({"content-type": "application/json"}, None),
    ({}, None),
])
def test_retry_after_in_every_form(headers: dict[str, str], seconds: float | None) -> None:
    assert retry_after_from_headers(headers, now=NOW) == (
        pytest.approx(seconds) if seconds is not None else None)


@pytest.mark.parametrize(("headers", "limits"), [
    ({"x-ratelimit-limit-requests": "30", "x-ratelimit-limit-tokens": "150000"},
     (30, 150000)),
    ({"X-RateLimit-Limit-Requests": "500"}, (500, None)),
    ({"llm_provider-x-ratelimit-limit-requests": "60",
      "llm_provider-x-ratelimit-limit-tokens": "1000"}, (60, 1000)),
    ({"x-ratelimit-limit-requests": "lots"}, (None, None)),
    ({"x-ratelimit-limit-requests": "0"}, (None, None)),  # 0 says nothing usable
    ({}, (None, None)),
])
def test_advertised_limits(headers: dict[str, str], limits: tuple[int | None, int | None]
                           ) -> None:
    assert limits_from_headers(headers) == limits


def test_remaining_through_a_proxy() -> None:
    assert remaining_from_headers({"llm_provider-x-ratelimit-remaining-requests": "4",
                                   "x-ratelimit-remaining-tokens": "99"}) == (4, 99)
