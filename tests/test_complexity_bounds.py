"""Complexity scoring is bounded on any input: a hostile prompt must not stall the router.

Before the fix, one 250 KiB prompt of a single letter held the router for 83 s (a quadratic
regex); each case here is 1 MiB, so a super-linear pattern anywhere fails by the timeout.
"""

from __future__ import annotations

import pytest

from services.router import complexity

MIB = 1 << 20

# Long runs of what each pattern's repeats consume, with the thing that ends a match missing.
HOSTILE = {
    "one letter": "a" * MIB,
    "newlines": "\n" * MIB,
    "spaces": " " * MIB,
    "tabs and newlines": "\t\n" * (MIB // 2),
    "first without then": "first " * (MIB // 6),
    "select without from": "SELECT " * (MIB // 7),
    "open calls": "a(" * (MIB // 2),
    "def without paren": "def " * (MIB // 4),
    "digits and spaces": "1 " * (MIB // 2),
    "braces": "{ " * (MIB // 2),
    "bullets": "- \n" * (MIB // 3),
    "word runs then a paren": ("abc" * 1000 + "(") * (MIB // 3001),
    "headings": ("word " * 8 + ":\n") * (MIB // 42),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("text", HOSTILE.values(), ids=HOSTILE.keys())
def test_scoring_a_hostile_mebibyte_finishes(text: str) -> None:
    result = complexity.score(text, prompt_tokens=len(text) // 4)
    assert 0.0 <= result.score <= 1.0
    assert "length" in result.signals  # long, whatever else it is


def test_a_long_prompt_is_scored_on_its_head_and_tail() -> None:
    code = "def handler(event):\n    return event\n"
    padding = "plain words " * 20_000
    for text in (code + padding, padding + code):
        assert "code" in complexity.score(text, prompt_tokens=60_000).signals
    # ... and what lies past the scored part in the middle is not looked at.
    middle = padding + code + padding
    assert "code" not in complexity.score(middle, prompt_tokens=120_000).signals
    assert len(complexity.scored_part(middle)) <= complexity.SCORED_CHARS + 1


def test_short_prompts_keep_their_signals() -> None:
    reasoning = complexity.score("First gather the data, then explain why it fails.", 12)
    assert "reasoning" in reasoning.signals
    sql = complexity.score("SELECT name FROM users WHERE id = 1; then sort it", 14)
    assert "code" in sql.signals
