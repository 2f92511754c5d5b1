"""Test the simulated provider: pure limiter and answer logic, then the real server via openai."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import quicktok
from pydantic import ValidationError

from services.common.tokens import count_messages, count_text
from services.mockllm.answers import NOT_SURE, answer, embed, is_cheap, parse_labels, truncate
from services.mockllm.ratelimit import RateLimiter, format_duration
from services.mockllm.server import parse_settings
from services.mockllm.settings import ControlUpdate
from services.mockllm.usage import billed_prompt_tokens

ROOT = Path(__file__).resolve().parents[1]
O200K = quicktok.get_encoding("o200k_base")  # gpt-4o's vocabulary, read apart from agentq
DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d+)?s|\d+ms)$")


# --- ratelimit.py -------------------------------------------------------------------------


def test_rpm_bucket_refills_continuously() -> None:
    limiter = RateLimiter(rpm=60, tpm=0, now=0.0)
    assert all(limiter.acquire(1, now=0.0).allowed for _ in range(60))
    denied = limiter.acquire(1, now=0.0)
    assert not denied.allowed
    assert denied.exceeded == "requests"
    assert denied.retry_after == pytest.approx(1.0)
    assert limiter.acquire(1, now=0.5).retry_after == pytest.approx(0.5)
    assert limiter.acquire(1, now=1.0).allowed
    assert not limiter.acquire(1, now=1.0).allowed


def test_zero_limits_mean_unlimited() -> None:
    limiter = RateLimiter(rpm=0, tpm=0, now=0.0)
    decisions = [limiter.acquire(10_000, now=0.0) for _ in range(1000)]
    assert all(d.allowed and d.requests is None and d.tokens is None for d in decisions)


def test_request_needs_both_limits_and_denial_charges_nothing() -> None:
    limiter = RateLimiter(rpm=100, tpm=1000, now=0.0)
    assert limiter.acquire(900, now=0.0).allowed
    denied = limiter.acquire(200, now=0.0)
    assert (denied.allowed, denied.exceeded) == (False, "tokens")
    assert denied.retry_after == pytest.approx(100 / (1000 / 60))  # 100 tokens short
    assert denied.requests is not None and denied.requests.remaining == 99
    assert denied.tokens is not None and denied.tokens.remaining == 100


def test_denial_names_the_limit_that_frees_up_last() -> None:
    limiter = RateLimiter(rpm=2, tpm=600, now=0.0)
    assert limiter.acquire(300, now=0.0).allowed
    assert limiter.acquire(300, now=0.0).allowed
    denied = limiter.acquire(60, now=0.0)  # tokens free in 6 s, a request slot in 30 s
    assert denied.exceeded == "requests"
    assert denied.retry_after == pytest.approx(30.0)


def test_reset_times_and_remaining() -> None:
    limiter = RateLimiter(rpm=60, tpm=6000, now=10.0)
    decision = limiter.acquire(600, now=10.0)
    assert decision.requests is not None and decision.tokens is not None
    assert (decision.requests.limit, decision.requests.remaining) == (60, 59)
    assert (decision.tokens.limit, decision.tokens.remaining) == (6000, 5400)
    assert decision.requests.reset == pytest.approx(1.0)
    assert decision.tokens.reset == pytest.approx(6.0)
    requests, tokens = limiter.peek(now=13.0)
    assert requests is not None and tokens is not None
    assert (requests.remaining, requests.reset) == (60, 0.0)
    assert tokens.remaining == 5700 and tokens.reset == pytest.approx(3.0)
    assert tokens.used == 300


def test_request_larger_than_the_token_limit_never_fits() -> None:
    decision = RateLimiter(rpm=0, tpm=1000, now=0.0).acquire(1001, now=0.0)
    assert not decision.allowed
    assert decision.exceeded == "tokens"
    assert math.isinf(decision.retry_after)


def test_clock_stepping_back_neither_refills_nor_drains() -> None:
    limiter = RateLimiter(rpm=60, tpm=0, now=100.0)
    assert limiter.acquire(1, now=100.0).allowed
    requests, _ = limiter.peek(now=50.0)
    assert requests is not None and requests.remaining == 59


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (0.0004, "1ms"),
        (0.12, "120ms"),
        (1.0, "1s"),
        (1.2, "1.2s"),
        (17.4985, "17.499s"),
        (90.5, "1m30.5s"),
        (360.0, "6m0s"),
        (3600.0, "1h0m0s"),
    ],
)
def test_format_duration_matches_openai(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# --- answers.py ---------------------------------------------------------------------------


def user(content: str) -> list[dict[str, str]]:
    """Return a one-message conversation."""
    return [{"role": "user", "content": content}]


def test_answers_are_deterministic() -> None:
    prompt = user("Summarise the quarterly report in one line")
    assert answer(prompt, "gpt-4o") == answer(prompt, "gpt-4o")
    assert answer(prompt, "gpt-4o") == answer(
        user(" Summarise  the quarterly\nreport in one line"), "gpt-4o"
    )
    assert answer(prompt, "gpt-4o").text != answer(user("Something else"), "gpt-4o").text


def test_plain_answer_is_a_short_sentence() -> None:
    words = " ".join(f"w{i}" for i in range(20))
    text = answer(user(words), "gpt-4o").text
    assert re.fullmatch(
        r"Answer [0-9a-f]{8} from gpt-4o: w0 w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11", text
    )


@pytest.mark.parametrize(
    "line",
    ["labels: spam, ham, eggs", "LABELS:spam,ham,eggs", "Pick one of the Labels: spam, ham, eggs."],
)
def test_labels_are_parsed(line: str) -> None:
    assert parse_labels(f"Classify the mail below.\n{line}\nBuy now!") == ["spam", "ham", "eggs"]


def test_label_answers_pick_one_label_and_spread() -> None:
    chosen = {
        answer(user(f"Ticket {i}\nlabels: billing, shipping, other"), "gpt-4o").text
        for i in range(60)
    }
    assert chosen == {"billing", "shipping", "other"}


def test_json_answers_are_valid_json() -> None:
    reply = json.loads(answer(user("Extract the city as JSON: I live in Oslo"), "gpt-4o").text)
    assert set(reply) == {"answer", "model"} and reply["model"] == "gpt-4o"
    labelled = json.loads(answer(user("Reply in json.\nlabels: yes, no"), "o1").text)
    assert labelled["answer"] in {"yes", "no"}


def test_hard_prompts_defeat_cheap_models_only() -> None:
    prompt = user("[hard] Prove it.\nlabels: true, false")
    assert answer(prompt, "gpt-4o-mini").text == NOT_SURE
    assert answer(prompt, "claude-3-5-haiku").text == NOT_SURE
    assert answer(prompt, "gpt-4o").text in {"true", "false"}
    assert answer(user("Prove it.\nlabels: true, false"), "gpt-4o-mini").text in {"true", "false"}


@pytest.mark.parametrize(
    ("model", "cheap"),
    [
        ("gpt-4o-mini", True),
        ("o4-mini", True),
        ("claude-3-5-haiku", True),
        ("cheap-model", True),
        ("gpt-4o", False),
        ("o1", False),
        ("gemini-pro", False),
        ("minimax-01", False),
    ],
)
def test_cheap_models_are_recognised_by_name_part(model: str, cheap: bool) -> None:
    assert is_cheap(model) is cheap


@pytest.mark.parametrize("max_tokens", [1, 2, 3, 5, 8, 13])
def test_max_tokens_truncates_and_reports_length(max_tokens: int) -> None:
    long_prompt = user(
        "Please explain internationalization of 1234567 widgets, thoroughly and well"
    )
    full = answer(long_prompt, "gpt-4o").text
    reply = answer(long_prompt, "gpt-4o", max_tokens=max_tokens)
    assert reply.finish_reason == "length"
    assert 0 < count_text(reply.text) <= max_tokens
    assert full.startswith(reply.text)


def test_enough_max_tokens_leaves_the_answer_whole() -> None:
    full = answer(user("Hello there"), "gpt-4o")
    assert answer(user("Hello there"), "gpt-4o", max_tokens=count_text(full.text)) == full
    assert full.finish_reason == "stop"


def test_truncate_cuts_inside_long_words() -> None:
    # The longest prefix that fits, whatever the tokenizer: one letter more would not.
    word = "internationalization"
    cut = truncate(word, 2)
    assert word.startswith(cut) and 0 < len(cut) < len(word)
    assert count_text(cut) <= 2 < count_text(word[:len(cut) + 1])


def cosine(a: list[float], b: list[float]) -> float:
    """Return the cosine of two vectors."""
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(
        sum(x * x for x in a) * sum(y * y for y in b)
    )


def test_embeddings_are_unit_vectors_where_similar_texts_lie_close() -> None:
    base = embed("How do I reset my password?")
    assert len(base) == 256 and sum(v * v for v in base) == pytest.approx(1.0)
    assert embed("How do I reset my password?") == base
    similar = embed("how can I reset my password")
    unrelated = embed("Quarterly revenue grew by eight percent")
    assert cosine(base, similar) > 0.6 > cosine(base, unrelated)
    assert sum(v * v for v in embed("   ")) == pytest.approx(1.0)


# --- usage.py: prompt tokens billed as OpenAI's chat format does ------------------------

# The tiktoken cookbook's example conversation, and the prompt tokens OpenAI's API reported
# for it (its num_tokens_from_messages agrees): 129 for cl100k models, 124 for o200k ones.
COOKBOOK = [
    {"role": "system", "content": "You are a helpful, pattern-following assistant that "
     "translates corporate jargon into plain English."},
    {"role": "system", "name": "example_user",
     "content": "New synergies will help drive top-line growth."},
    {"role": "system", "name": "example_assistant",
     "content": "Things working well together will increase revenue."},
    {"role": "system", "name": "example_user", "content": "Let's circle back when we have "
     "more bandwidth to touch base on opportunities for increased leverage."},
    {"role": "system", "name": "example_assistant",
     "content": "Let's talk later when we're less busy about how to do better."},
    {"role": "user", "content": "This late pivot means we don't have time to boil the ocean "
     "for the client deliverable."},
]


@pytest.mark.parametrize(("model", "billed"), [
    ("gpt-3.5-turbo", 129), ("gpt-4", 129), ("gpt-4o", 124), ("gpt-4o-mini", 124),
    ("gpt-3.5-turbo-0301", 127),  # 4 per message, a name in place of the role
])
def test_usage_bills_the_cookbook_example_as_openai_did(model: str, billed: int) -> None:
    assert billed_prompt_tokens(COOKBOOK, model) == billed


def test_usage_counts_every_field_as_sent() -> None:
    plain = [{"role": "user", "content": "Where is my parcel?"}]
    question = len(O200K.encode(plain[0]["content"]))
    assert billed_prompt_tokens(plain, "gpt-4o") == 3 + 3 + 1 + question
    parts = [{"role": "user", "content": [{"type": "text", "text": "Where is "},
                                          {"type": "text", "text": "my parcel?"}]}]
    assert billed_prompt_tokens(parts, "gpt-4o") == billed_prompt_tokens(plain, "gpt-4o")
    named = [{**plain[0], "name": "ana"}]
    assert billed_prompt_tokens(named, "gpt-4o") == (
        billed_prompt_tokens(plain, "gpt-4o") + len(O200K.encode("ana")) + 1)
    call = {"id": "c1", "type": "function", "function": {"name": "track", "arguments": "{}"}}
    tool_turn = [{"role": "assistant", "content": None, "tool_calls": [call]}]
    assert billed_prompt_tokens(tool_turn, "gpt-4o") == 3 + 3 + 1 + len(
        O200K.encode(json.dumps([call], separators=(",", ":"))))


def test_agentqs_estimate_is_the_bill_for_a_tasks_messages() -> None:
    # What the limiter reserves for a Task's prompt is what the provider will bill for it.
    messages = [{"role": "system", "content": "You sort support tickets."},
                {"role": "user", "content": "お誕生日おめでとう, where is my parcel?"}]
    for model in ("gpt-4o-mini", "gpt-4", "o1"):
        assert count_messages(messages, model=model) == billed_prompt_tokens(messages, model)
    assert count_messages(COOKBOOK, model="gpt-4o") == 124  # names counted too


# --- settings.py and flags ----------------------------------------------------------------


def test_control_update_is_strict() -> None:
    for body in (
        '{"rpm": "5"}',
        '{"error_rate": 1.5}',
        '{"latency": 3}',
        '{"rpm": true}',
        '{"fail_next": {"count": 1, "status": 404}}',
        '{"retry_after": 2}',
    ):
        with pytest.raises(ValidationError):
            ControlUpdate.model_validate_json(body)


def test_control_update_accepts_top_level_retry_after() -> None:
    update = ControlUpdate.model_validate_json(
        '{"fail_next": {"count": 2, "status": 429}, "retry_after": 2.5}'
    )
    assert update.fail_next is not None and update.fail_next.retry_after == 2.5
    assert update.setting_changes() == {}


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTQ_MOCK_RPM", "50")
    monkeypatch.setenv("AGENTQ_MOCK_TPM", "9000")
    settings = parse_settings(["--rpm", "7", "--error-rate", "0.25", "--latency-ms", "12.5"])
    assert (settings.rpm, settings.tpm, settings.error_rate, settings.latency_ms) == (
        7,
        9000,
        0.25,
        12.5,
    )
    with pytest.raises(SystemExit):
        parse_settings(["--error-rate", "2"])


# --- the real server, through the openai SDK ----------------------------------------------


def free_port() -> int:
    """Return a TCP port that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_healthy(base: str, process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Poll /healthz until the server answers, failing early if it died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mockllm exited early with status {process.returncode}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"mockllm at {base} not healthy after {timeout}s")


@contextmanager
def running_server(
    *flags: str, env: dict[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Run `python -m services.mockllm.server` on a free port; stop it with SIGTERM."""
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AGENTQ_MOCK_")}
    command = [sys.executable, "-m", "services.mockllm.server", "--port", str(port), *flags]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, cwd=ROOT, env={**clean, **(env or {})}, stderr=log)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_until_healthy(base, process)
            yield base, process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with running_server() as (base, _):
        yield base


@pytest.fixture
def mock(server: str) -> str:
    """Return the server's base URL with default behaviour and zeroed stats."""
    defaults = {
        "rpm": 0,
        "tpm": 0,
        "latency_ms": 0,
        "jitter_ms": 0,
        "error_rate": 0,
        "seed": 0,
        "fail_next": {"count": 0},
    }
    httpx.post(f"{server}/control", json=defaults).raise_for_status()
    httpx.post(f"{server}/stats/reset").raise_for_status()
    return server


@pytest.fixture
def client(mock: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{mock}/v1", api_key="test", max_retries=0, timeout=10) as sdk:
        yield sdk


def control(base: str, **changes: Any) -> dict[str, Any]:
    """Change the server's behaviour, returning its settings."""
    response = httpx.post(f"{base}/control", json=changes)
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def stats(base: str) -> dict[str, Any]:
    """Return the server's counters."""
    result: dict[str, Any] = httpx.get(f"{base}/stats").json()
    return result


def ask(client: openai.OpenAI, content: str, model: str = "gpt-4o-mini", **kwargs: Any) -> Any:
    """Send one user message."""
    return client.chat.completions.create(model=model, messages=user(content), **kwargs)


def test_chat_completion_matches_the_tokenizer_and_answers(client: openai.OpenAI) -> None:
    messages = [
        {"role": "system", "content": "You sort support tickets."},
        {"role": "user", "content": "My parcel never arrived.\nlabels: billing, shipping, other"},
    ]
    completion = client.chat.completions.create(model="gpt-4o", messages=messages)  # type: ignore[arg-type]
    choice = completion.choices[0]
    assert completion.id.startswith("chatcmpl-") and completion.object == "chat.completion"
    assert completion.model == "gpt-4o"
    assert choice.message.role == "assistant" and choice.finish_reason == "stop"
    assert choice.message.content == answer(messages, "gpt-4o").text
    assert choice.message.content in {"billing", "shipping", "other"}
    assert completion.usage is not None
    # Billed by OpenAI's chat format in gpt-4o's own vocabulary (o200k_base).
    assert completion.usage.prompt_tokens == billed_prompt_tokens(messages, "gpt-4o") == (
        3 + (3 + len(O200K.encode("system")) + len(O200K.encode(messages[0]["content"])))
        + (3 + len(O200K.encode("user")) + len(O200K.encode(messages[1]["content"]))))
    assert completion.usage.completion_tokens == len(O200K.encode(choice.message.content))
    assert (
        completion.usage.total_tokens
        == completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


def test_max_tokens_over_http(client: openai.OpenAI) -> None:
    completion = ask(
        client, "Tell me everything about distributed queues", model="gpt-4o", max_tokens=3
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens <= 3


def test_over_rpm_gives_rate_limit_error_with_headers(client: openai.OpenAI, mock: str) -> None:
    control(mock, rpm=3)
    remaining = []
    for _ in range(3):
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=user("hi")
        )
        remaining.append(raw.headers["x-ratelimit-remaining-requests"])
        assert raw.headers["x-ratelimit-limit-requests"] == "3"
    assert remaining == ["2", "1", "0"]
    with pytest.raises(openai.RateLimitError) as caught:
        ask(client, "hi")
    error, headers = caught.value, caught.value.response.headers
    assert error.code == "rate_limit_exceeded" and error.type == "requests"
    assert "on requests per min (RPM): Limit 3, Used 3, Requested 1" in error.message
    assert 19 <= int(headers["retry-after"]) <= 20  # one slot refills in 60/3 s
    assert 19_000 <= int(headers["retry-after-ms"]) <= 20_000
    assert headers["x-ratelimit-limit-requests"] == "3"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert DURATION.match(headers["x-ratelimit-reset-requests"])
    assert "x-ratelimit-limit-tokens" not in headers  # the token limit is off


def test_over_tpm_counts_prompt_plus_max_tokens(client: openai.OpenAI, mock: str) -> None:
    control(mock, tpm=1000)
    first = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=user("hi"), max_tokens=700
    )
    charged = billed_prompt_tokens(user("hi"), "gpt-4o") + 700
    # The bucket refills 1000/60 tokens a second, so allow for the moments between calls.
    assert 0 <= int(first.headers["x-ratelimit-remaining-tokens"]) - (1000 - charged) <= 2
    assert DURATION.match(first.headers["x-ratelimit-reset-tokens"])
    with pytest.raises(openai.RateLimitError) as caught:
        ask(client, "hi", model="gpt-4o", max_tokens=700)
    assert caught.value.type == "tokens"
    assert f"Requested {charged}" in caught.value.message
    with pytest.raises(openai.RateLimitError) as too_large:
        ask(client, "hi", model="gpt-4o", max_tokens=5000)
    assert too_large.value.body["message"].startswith("Request too large")
    assert too_large.value.response.headers["x-should-retry"] == "false"


def test_error_rate_one_gives_internal_server_error(client: openai.OpenAI, mock: str) -> None:
    control(mock, error_rate=1.0)
    with pytest.raises(openai.InternalServerError) as caught:
        ask(client, "hi")
    assert caught.value.status_code == 500
    assert caught.value.body == {
        "message": "The server had an error while processing your request.",
        "type": "server_error",
        "param": None,
        "code": None,
    }


def test_stats_count_exactly(client: openai.OpenAI, mock: str) -> None:
    replies = [ask(client, f"question {i}") for i in range(3)] + [
        ask(client, "other", model="gpt-4o")
    ]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="gpt-4o-mini", messages=[])
    control(mock, fail_next={"count": 1, "status": 429})
    with pytest.raises(openai.RateLimitError):
        ask(client, "limited")
    control(mock, fail_next={"count": 1, "status": 500})
    with pytest.raises(openai.InternalServerError):
        ask(client, "broken", model="gpt-4o")
    counts = stats(mock)
    prompt = sum(r.usage.prompt_tokens for r in replies)
    completion = sum(r.usage.completion_tokens for r in replies)
    assert {k: v for k, v in counts.items() if k != "by_model"} == {
        "requests": 7,
        "completed": 4,
        "rate_limited": 1,
        "errors": 2,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "in_flight": 0,
        "embeddings": 0,
        "batches": 0,  # live calls are never counted as batch lines
        "batch_lines": {},
    }
    assert counts["by_model"]["gpt-4o-mini"]["requests"] == 4
    assert counts["by_model"]["gpt-4o-mini"]["completed"] == 3
    assert counts["by_model"]["gpt-4o-mini"]["rate_limited"] == 1
    assert counts["by_model"]["gpt-4o"]["errors"] == 1


def test_stats_reset_zeroes(client: openai.OpenAI, mock: str) -> None:
    ask(client, "hi")
    assert stats(mock)["completed"] == 1
    zeroed = httpx.post(f"{mock}/stats/reset").json()
    assert zeroed == stats(mock)
    assert zeroed["by_model"] == {}
    assert all(
        zeroed[k] == 0 for k in ("requests", "completed", "rate_limited", "errors", "prompt_tokens")
    )


def test_fail_next_fails_exactly_n_requests(client: openai.OpenAI, mock: str) -> None:
    settings = control(mock, fail_next={"count": 2, "status": 503})
    assert settings["fail_next"] == {"count": 2, "status": 503, "retry_after": 1.0}
    for _ in range(2):
        with pytest.raises(openai.InternalServerError) as caught:
            ask(client, "hi")
        assert caught.value.status_code == 503
    assert ask(client, "hi").choices[0].finish_reason == "stop"

    control(mock, fail_next={"count": 1, "status": 429, "retry_after": 2.5})
    with pytest.raises(openai.RateLimitError) as limited:
        ask(client, "hi")
    assert limited.value.response.headers["retry-after"] == "3"
    assert limited.value.response.headers["retry-after-ms"] == "2500"
    control(mock, fail_next={"count": 1, "status": 429})
    with pytest.raises(openai.RateLimitError) as default:
        ask(client, "hi")
    assert default.value.response.headers["retry-after"] == "1"
    assert ask(client, "hi").choices[0].message.content


@pytest.mark.parametrize(
    "body",
    [
        {"rpm": -1},
        {"error_rate": 2},
        {"rpm": "5"},
        {"bogus": 1},
        {"fail_next": {"count": 1, "status": 418}},
        {"fail_next": {"status": 429}},
        {"retry_after": 1},
    ],
)
def test_control_rejects_bad_values(mock: str, body: dict[str, Any]) -> None:
    before = httpx.get(f"{mock}/control").json()
    response = httpx.post(f"{mock}/control", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(f"{mock}/control").json() == before


def test_control_changes_latency_and_in_flight_is_counted(client: openai.OpenAI, mock: str) -> None:
    assert control(mock, latency_ms=400)["latency_ms"] == 400
    started = time.monotonic()
    worker = threading.Thread(target=ask, args=(client, "slow"))
    worker.start()
    deadline = time.monotonic() + 5
    while stats(mock)["in_flight"] != 1:
        assert time.monotonic() < deadline, "the slow request never showed as in flight"
        time.sleep(0.01)
    worker.join(timeout=5)
    assert time.monotonic() - started >= 0.4
    assert stats(mock)["in_flight"] == 0 and stats(mock)["completed"] == 1


def test_embeddings_shape_and_determinism(client: openai.OpenAI) -> None:
    texts = ["reset my password", "how to reset a password", "quarterly revenue report"]
    default = client.embeddings.create(
        model="text-embedding-3-small", input=texts
    )  # base64 on the wire
    floats = client.embeddings.create(
        model="text-embedding-3-small", input=texts, encoding_format="float"
    )
    assert [d.index for d in default.data] == [0, 1, 2]
    vectors = [d.embedding for d in floats.data]
    assert all(len(v) == 256 and sum(x * x for x in v) == pytest.approx(1.0) for v in vectors)
    for decoded, exact in zip(default.data, vectors, strict=True):
        assert decoded.embedding == pytest.approx(exact, abs=1e-6)  # float32 on the wire
    assert vectors == [
        d.embedding
        for d in client.embeddings.create(
            model="text-embedding-3-small", input=texts, encoding_format="float"
        ).data
    ]
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2])
    assert (
        floats.usage.prompt_tokens == sum(count_text(t) for t in texts) == floats.usage.total_tokens
    )
    single = client.embeddings.create(model="text-embedding-3-small", input="x", dimensions=64)
    assert len(single.data[0].embedding) == 64


def test_bad_input_gives_bad_request_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=[])
    assert caught.value.param == "messages" and caught.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as role:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "robot", "content": "x"}]
        )  # type: ignore[list-item, misc]
    assert role.value.param == "messages[0].role"
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="text-embedding-3-small", input="")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[]", None),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": 5, "messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": "gpt-4o", "messages": "hi"}', "messages"),
        (
            b'{"model": "gpt-4o", "messages": [{"role": "user", "content": 5}]}',
            "messages[0].content",
        ),
        (
            b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}',
            "max_tokens",
        ),
        (
            b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "stream": true}',
            "stream",
        ),
    ],
)
def test_malformed_chat_bodies_get_openai_errors(mock: str, body: bytes, param: str | None) -> None:
    response = httpx.post(f"{mock}/v1/chat/completions", content=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]
    assert stats(mock)["errors"] == 1


def test_authorization_is_checked_loosely(mock: str) -> None:
    body = {"model": "gpt-4o", "messages": user("hi")}
    url = f"{mock}/v1/chat/completions"
    assert httpx.post(url, json=body).status_code == 200
    assert (
        httpx.post(url, json=body, headers={"Authorization": "Bearer anything"}).status_code == 200
    )
    for header in ("Bearer", "Basic dXNlcjpwYXNz"):
        refused = httpx.post(url, json=body, headers={"Authorization": header})
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"
    assert stats(mock)["errors"] == 2


def test_models_are_listed(client: openai.OpenAI) -> None:
    ids = [model.id for model in client.models.list()]
    assert ids == [
        "gpt-4o-mini",
        "gpt-4o",
        "o1",
        "claude-3-5-haiku",
        "claude-sonnet-4",
        "text-embedding-3-small",
    ]
    assert client.models.retrieve("o1").id == "o1"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-9")


def test_cascade_trigger_over_http(client: openai.OpenAI) -> None:
    prompt = "[hard] Is this contract void?\nlabels: yes, no"
    assert ask(client, prompt, model="gpt-4o-mini").choices[0].message.content == NOT_SURE
    assert ask(client, prompt, model="gpt-4o").choices[0].message.content in {"yes", "no"}


def test_main_takes_flags_over_env_and_stops_on_sigterm() -> None:
    with running_server(
        "--rpm", "3", "--seed", "5", env={"AGENTQ_MOCK_RPM": "50", "AGENTQ_MOCK_TPM": "777"}
    ) as (
        base,
        process,
    ):
        settings = httpx.get(f"{base}/control").json()
        assert (settings["rpm"], settings["tpm"], settings["seed"]) == (3, 777, 5)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
