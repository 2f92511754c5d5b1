"""Every event our services emit has a model, emits match it, and consumers read only it.

The source is scanned with `ast`: a new `emit(...)` of an unknown type, a payload key its
model lacks, or a consumer reading a field no model declares fails here, not on a dashboard.
"""

from __future__ import annotations

import ast
import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.common import events
from services.common.events import EVENTS, EventContractError, check, fields_of
from services.common.publishing import emit
from services.worker.limiter import PoolLimits
from services.worker.limiter_report import LimiterReport

SERVICES = Path(__file__).resolve().parent.parent / "services"
ENVELOPE = {"tenant", "task_id"}  # emit's own keywords: Event fields, not data


@dataclass(frozen=True)
class Emission:
    where: str
    types: tuple[str, ...]
    keys: frozenset[str] | None  # None: a `**data` we cannot read statically
    open_ended: bool


def _modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(SERVICES.rglob("*.py")):
        yield str(path.relative_to(SERVICES.parent)), ast.parse(path.read_text(), str(path))


def _module_constants(tree: ast.Module) -> dict[str, str]:
    """Return a module's top-level `NAME = "text"` assignments."""
    out: dict[str, str] = {}
    for node in tree.body:
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    out[target.id] = node.value.value
    return out


def _constants() -> dict[str, str]:
    """Return every module-level string constant in services/ (imported event names)."""
    out: dict[str, str] = {}
    for _, tree in _modules():
        out.update(_module_constants(tree))
    return out


def _names(node: ast.expr, constants: dict[str, str], where: str) -> tuple[str, ...]:
    """Return the event names an expression can be; fail on one we cannot know statically."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return (node.value,)
    if isinstance(node, ast.Name) and node.id in constants:
        return (constants[node.id],)
    if isinstance(node, ast.IfExp):
        return _names(node.body, constants, where) + _names(node.orelse, constants, where)
    raise AssertionError(f"{where}: the event name {ast.unparse(node)!r} is not a literal "
                         "or a module constant; the contract test cannot check it")


def _callee(call: ast.Call) -> str:
    func = call.func
    return func.id if isinstance(func, ast.Name) else (
        func.attr if isinstance(func, ast.Attribute) else "")


def emissions() -> list[Emission]:
    """Find every `emit(bus, TYPE, service, **data)` and `Emit(type=..., data={...})`."""
    shared = _constants()
    found = []
    for module, tree in _modules():
        constants = {**shared, **_module_constants(tree)}  # the module's own name wins
        # Names a match/case binds forward a value built elsewhere (an Emit action's type).
        captured = {n.name for n in ast.walk(tree) if isinstance(n, ast.MatchAs) and n.name}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            where = f"{module}:{node.lineno}"
            name = _callee(node)
            if name == "emit" and len(node.args) >= 2:
                forwarded = isinstance(node.args[1], ast.Attribute) or (
                    isinstance(node.args[1], ast.Name) and node.args[1].id in captured)
                if forwarded:
                    continue  # an Emit action's type: checked where the action is built
                keys = {k.arg for k in node.keywords if k.arg is not None} - ENVELOPE
                open_ended = any(k.arg is None for k in node.keywords)
                found.append(Emission(where, _names(node.args[1], constants, where),
                                      frozenset(keys), open_ended))
            elif name == "Emit":
                type_arg = next((k.value for k in node.keywords if k.arg == "type"),
                                node.args[0] if node.args else None)
                if type_arg is None:
                    continue
                data = next((k.value for k in node.keywords if k.arg == "data"),
                            node.args[3] if len(node.args) > 3 else None)
                literal = isinstance(data, ast.Dict) and all(
                    isinstance(k, ast.Constant) for k in data.keys)
                keys = frozenset(str(k.value) for k in data.keys
                                 if isinstance(k, ast.Constant)) if literal else None
                assert isinstance(type_arg, ast.expr)
                found.append(Emission(where, _names(type_arg, constants, where), keys,
                                      not literal))
    return found


def test_the_scan_finds_the_emitters() -> None:
    types = {t for e in emissions() for t in e.types}
    # A scan that finds nothing would pass every check below: pin a few known emitters.
    assert {"task.routed", "task.started", "task.completed", "limiter.stats",
            "scale.up", "scale.down"} <= types


def test_every_emitted_event_has_a_model() -> None:
    missing = {f"{e.where}: {t}" for e in emissions() for t in e.types if t not in EVENTS}
    assert not missing, f"events without a model in services/common/events.py: {missing}"


def test_every_model_is_emitted_somewhere() -> None:
    emitted = {t for e in emissions() for t in e.types}
    assert set(EVENTS) - emitted == set(), "models of events nothing emits"


def test_emitted_keys_are_declared_and_required_ones_given() -> None:
    wrong = []
    for e in emissions():
        if e.keys is None:
            continue
        for type_ in e.types:
            model = EVENTS[type_]
            declared = fields_of(type_)
            extra = e.keys - declared
            required = {f.alias or n for n, f in model.model_fields.items() if f.is_required()}
            missing = set() if e.open_ended else required - e.keys
            if extra or missing:
                wrong.append(f"{e.where} {type_}: undeclared {sorted(extra)}, "
                             f"missing {sorted(missing)}")
    assert not wrong, wrong


# -- consumers --

def _handled_types(tree: ast.Module) -> set[str]:
    """Return the event types a module tells apart by `<x>.type` (== or match/case)."""
    out: set[str] = set()

    def strings(pattern: ast.pattern) -> Iterator[str]:
        if isinstance(pattern, ast.MatchValue) and isinstance(pattern.value, ast.Constant):
            yield str(pattern.value.value)
        elif isinstance(pattern, ast.MatchOr):
            for p in pattern.patterns:
                yield from strings(p)

    for node in ast.walk(tree):
        if isinstance(node, ast.Match) and isinstance(node.subject, ast.Attribute) \
                and node.subject.attr == "type":
            for case in node.cases:
                out.update(strings(case.pattern))
        elif isinstance(node, ast.Compare) and isinstance(node.left, ast.Attribute) \
                and node.left.attr == "type":
            for right in node.comparators:
                if isinstance(right, ast.Constant) and isinstance(right.value, str):
                    out.add(right.value)
    return out


def _is_data(node: ast.expr) -> bool:
    """Whether an expression is an event's data (`data` or `<event>.data`)."""
    return (isinstance(node, ast.Name) and node.id == "data") or (
        isinstance(node, ast.Attribute) and node.attr == "data")


def _keys_read(tree: ast.Module) -> set[str]:
    """Return the literal keys read from `data`: `.get("k")`, `["k"]`, `helper(data, "k")`."""
    out: set[str] = set()
    for node in ast.walk(tree):
        key: ast.expr | None = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr == "get" and _is_data(node.func.value) and node.args:
            key = node.args[0]
        elif isinstance(node, ast.Subscript) and _is_data(node.value):
            key = node.slice
        elif isinstance(node, ast.Call) and len(node.args) >= 2 and _is_data(node.args[0]):
            key = node.args[1]
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            out.add(key.value)
    return out


def consumers() -> dict[str, tuple[set[str], set[str]]]:
    """Return, per module that tells events apart by type, the types and the keys it reads."""
    out = {}
    for module, tree in _modules():
        handled = _handled_types(tree) & ({*EVENTS} | {t for t in _handled_types(tree)
                                                       if "." in t})
        if handled and "Event" in ast.unparse(tree):
            out[module] = (handled, _keys_read(tree))
    return out


def test_the_scan_finds_the_consumers() -> None:
    assert {"services/dashboard/rollup.py", "services/autoscale/telemetry.py"} <= set(
        consumers())


def test_consumers_handle_only_modelled_events_and_read_only_declared_fields() -> None:
    wrong = []
    for module, (handled, keys) in consumers().items():
        unknown = handled - set(EVENTS)
        if unknown:
            wrong.append(f"{module} handles events nothing emits: {sorted(unknown)}")
        declared = set().union(*(fields_of(t) for t in handled & set(EVENTS)))
        if keys - declared:
            wrong.append(f"{module} reads undeclared fields {sorted(keys - declared)}")
    assert not wrong, wrong


# -- the models themselves, against what the producers build --

def test_the_limiter_report_matches_the_limiter_stats_model() -> None:
    report = LimiterReport({"mock": PoolLimits(rpm=600, tpm=100_000)})
    report.events({"grants": 0}, 0.0)
    payloads = report.events({"grants": 30, "granted_tokens": 900, "rate_limited": 2,
                              "workers": 2, "fallback": False}, 60.0)
    assert payloads
    for data in payloads:
        check("limiter.stats", {"worker_id": "w1", **data})


@pytest.mark.parametrize(("type_", "data", "problem"), [
    ("task.teleported", {}, "has no model"),
    ("task.retry", {"tier": "cheap", "attempt": 1, "delay_ms": 250}, "error_code"),
    ("task.retry", {"tier": "cheap", "attempt": "first", "delay_ms": 250,
                    "error_code": "timeout"}, "attempt"),
    ("worker.heartbeat", {"worker_id": "w", "tiers": [], "in_flight": 0, "concurrency": 1,
                          "pid": 1, "mood": "fine"}, "mood"),
])
def test_a_bad_event_is_named_with_its_problem(type_: str, data: dict[str, object],
                                               problem: str) -> None:
    with pytest.raises(EventContractError, match=problem):
        check(type_, data)


def test_scaling_takes_its_from_field_by_its_wire_name() -> None:
    check("scale.up", {"from": 1, "to": 2, "reason": "backlog", "ready": 5, "unacked": 0,
                       "depth_source": "management"})


def test_a_bad_payload_is_logged_in_production_and_raised_when_strict(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="services.common.events"):
        assert events.checked("task.dead", {"tier": "cheap"}) is False
    assert "task.dead" in caplog.text and "attempts" in caplog.text
    events.set_strict(True)
    try:
        with pytest.raises(EventContractError):
            events.checked("task.dead", {"tier": "cheap"})
        assert events.checked("task.dead", {"tier": "cheap", "attempts": 3,
                                            "error_code": "timeout"})
    finally:
        events.set_strict(False)


def test_emit_refuses_a_bad_event_before_publishing_when_strict() -> None:
    events.set_strict(True)
    try:
        with pytest.raises(EventContractError, match="no model"):
            # No broker is reached: the payload is refused before anything is published.
            asyncio.run(emit(object(), "task.teleported", "test"))  # type: ignore[arg-type]
    finally:
        events.set_strict(False)
