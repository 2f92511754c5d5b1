"""The building blocks of a task's validator, safe on untrusted input: pure.

A validator comes from any client and runs in the worker after a paid call, so each piece is
bounded: JSON Schemas resolve `$ref` only inside themselves (never over the network), and
regexes run on the `regex` engine with a time limit (Python's `re` has none, and a pattern
such as `(x+x+)+y` backtracks for minutes).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import regex
from referencing import Registry, Resource
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

REGEX_TIMEOUT_S = 0.25
REF_KEYS = ("$ref", "$dynamicRef", "$recursiveRef")


def compile_pattern(pattern: str) -> regex.Pattern[str]:
    """Compile a validator regex; raise ValueError naming what is wrong."""
    try:
        return regex.compile(pattern, regex.DOTALL | regex.V0)
    except regex.error as exc:
        raise ValueError(f"regex does not compile: {exc}") from None


def fullmatch(pattern: str, text: str, timeout_s: float = REGEX_TIMEOUT_S) -> bool:
    """Return whether the whole text matches; raise TimeoutError past `timeout_s`."""
    return compile_pattern(pattern).fullmatch(text, timeout=timeout_s) is not None


def _refs(node: Any) -> Iterator[str]:
    stack = [node]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                if key in REF_KEYS and isinstance(item, str):
                    yield item
                else:
                    stack.append(item)
        elif isinstance(value, list):
            stack.extend(value)


def no_network_registry() -> Registry[Any]:
    """A registry that knows no documents and retrieves none: a `$ref` outside the schema
    fails as unresolvable instead of being fetched."""
    return Registry()


def schema_ref_problem(schema: dict[str, Any]) -> str | None:
    """Return why a schema's references cannot be used (remote, or pointing nowhere)."""
    resolver = no_network_registry().with_resource(
        "", Resource.from_contents(schema, default_specification=DRAFT202012)
    ).resolver(base_uri="")
    for ref in _refs(schema):
        if not ref.startswith("#"):
            return f"$ref {ref!r} is not inside the schema: only '#...' references are allowed"
        try:
            resolver.lookup(ref)
        except Unresolvable:
            return f"$ref {ref!r} points to nothing in the schema"
    return None
