"""Hypothesis strategies for what may reach a door: JSON of every shape, task-like objects
with hostile field values, JSON text no encoder writes (huge integers, NaN, deep nesting),
and raw bytes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

FOUR_BYTE = "\U0001d518"  # 𝔘: four bytes in UTF-8


@dataclass(frozen=True)
class Raw:
    """JSON text written as is: what json.dumps refuses or never writes."""

    text: str


def dump(value: Any) -> str:
    """Write `value` as JSON, with Raw pieces verbatim (lone surrogates escaped)."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{dump(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(v) for v in value) + "]"
    return json.dumps(value)


HOSTILE_STRINGS = [
    "", " ", ".", "..", "...", "/", "../etc/passwd", "%2e%2e", "a/b", "a b", "#", "*", "a.b",
    "\x00", "\ud800", "\udfff", "x\ud83d", "\ufeff", "\u202e", "é", "Ω", "名前",
    FOUR_BYTE * 16, FOUR_BYTE * 17, "t" * 64, "t" * 65, "x" * 10_000, "-", "_", ":", "0",
    "default", "cheap", "premium", "gold", "NaN", "null", "true", "{}", "[]",
    "00000000-0000-0000-0000-000000000000",
]
RAW_NUMBERS = [Raw("1" * 5000), Raw("-" + "9" * 4301), Raw("1e999"), Raw("-1e999"),
               Raw("NaN"), Raw("Infinity"), Raw("-Infinity"), Raw("-0"), Raw("1E400"),
               Raw("0.0000000000000000000000000001")]

hostile_text = st.one_of(
    st.sampled_from(HOSTILE_STRINGS),
    st.text(st.characters(exclude_categories=()), max_size=40),  # surrogates included
    st.text(st.sampled_from(["a", ".", "-", "_", FOUR_BYTE, "é", "\ud800"]), max_size=70),
)
numbers = st.one_of(st.integers(), st.integers(min_value=-2**70, max_value=2**70),
                    st.floats(allow_nan=False, allow_infinity=False),
                    st.sampled_from(RAW_NUMBERS))
leaves = st.one_of(st.none(), st.booleans(), numbers, hostile_text)
json_values = st.recursive(
    leaves,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(hostile_text, children, max_size=4)),
    max_leaves=20)


def _nested(depth: int, inner: str = "1") -> Raw:
    return Raw("[" * depth + inner + "]" * depth)


deep = st.sampled_from([_nested(31), _nested(33), _nested(200), _nested(5000),
                        Raw('{"a":' * 40 + "1" + "}" * 40)])
messages = st.one_of(
    st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant", "wizard", "", "tool"]),
         "content": hostile_text}), max_size=3),
    json_values)
# Each field either well typed (so that many tasks are valid) or anything at all.
task_fields: dict[str, st.SearchStrategy[Any]] = {
    "id": st.one_of(st.uuids().map(str), hostile_text, json_values),
    "tenant": st.one_of(st.sampled_from(["acme", "t1", FOUR_BYTE * 16]), hostile_text,
                        json_values),
    "kind": st.one_of(st.sampled_from(["classify", "extract", "summarize", "chat"]),
                      hostile_text, json_values),
    "prompt": st.one_of(hostile_text, json_values),
    "messages": messages,
    "tier": st.one_of(st.sampled_from(["cheap", "standard", "premium", "gold"]), json_values),
    "max_tokens": st.one_of(st.integers(min_value=-5, max_value=300_000), numbers),
    "temperature": st.one_of(st.floats(min_value=-1, max_value=3), numbers, hostile_text),
    "cache": st.one_of(st.sampled_from(["auto", "off", "on", "maybe"]), json_values),
    "priority": st.one_of(st.integers(min_value=-2, max_value=12), numbers, hostile_text),
    "metadata": st.one_of(st.dictionaries(hostile_text, json_values, max_size=3), json_values,
                          deep),
    "validator": st.one_of(st.none(), st.fixed_dictionaries(
        {}, optional={"regex": hostile_text, "labels": st.lists(hostile_text, max_size=3),
                      "json_schema": json_values}), json_values),
    "reply_to": st.one_of(hostile_text, json_values),
    "submitted_at": numbers,
    "deadline": hostile_text,
}
task_like = st.fixed_dictionaries(
    {"prompt": st.text(max_size=30)},
    optional={**{k: v for k, v in task_fields.items() if k != "prompt"},
              "unknown": json_values})
task_bare = st.fixed_dictionaries({}, optional=task_fields)
# Odd but mostly valid: ids and tenants of letters from every script (4-byte ones too),
# dots, colons; so that many of these reach the store, the router's lanes and the workers.
_name_chars = st.sampled_from(["a", "Z", "0", "_", "-", ".", "é", "名", FOUR_BYTE, "ß", "ǅ"])
task_plausible = st.fixed_dictionaries(
    {"prompt": hostile_text.filter(lambda t: "\ud800" not in t)},
    optional={"id": st.text(st.sampled_from(["a", "0", "-", "_", ".", ":", "é", FOUR_BYTE]),
                            min_size=1, max_size=64),
              "tenant": st.text(_name_chars, min_size=1, max_size=20),
              "kind": st.text(_name_chars, min_size=1, max_size=20),
              "priority": st.integers(min_value=0, max_value=9),
              "metadata": st.dictionaries(hostile_text, json_values, max_size=3),
              "cache": st.sampled_from(["auto", "off"]),
              "tier": st.sampled_from(["cheap", "standard", "premium"])})

payloads = st.one_of(
    task_plausible, task_plausible, task_like, task_like, task_bare,
    st.lists(task_like, min_size=0, max_size=3),  # HTTP takes lists; AMQP refuses them
    json_values, deep, st.sampled_from(RAW_NUMBERS))


def encoded(value: Any) -> bytes:
    """The body a client would send: JSON text, lone surrogates as \\u escapes."""
    return dump(value).encode()


bodies = st.one_of(
    payloads.map(encoded), payloads.map(encoded), payloads.map(encoded),
    st.binary(max_size=64),  # not UTF-8, not JSON
    st.just(b'{"prompt": "' + b"x" * (1024 * 1024 + 100) + b'"}'),  # over the size limit
    payloads.map(lambda v: encoded(v)[: max(0, len(encoded(v)) // 2)]),  # cut short
)
