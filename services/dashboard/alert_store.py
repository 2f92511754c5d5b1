"""Load and save the alert settings, each rule's state and the alert history."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import select

from services.dashboard.alerts import Reading, Status, Transition
from services.dashboard.db_session import DbSession
from services.dashboard.models import AlertEvent, AlertState, Threshold
from services.dashboard.thresholds import Value, merged


def load_values(session: DbSession) -> dict[str, Value]:
    """Return every setting: the stored ones over the defaults."""
    stored: dict[str, Any] = {}
    for row in session.execute(select(Threshold.key, Threshold.value)):
        try:
            stored[row.key] = json.loads(row.value)
        except ValueError:
            continue  # unreadable row: the default stands
    return merged(stored)


def save_values(session: DbSession, values: Mapping[str, Value], now: float) -> None:
    """Store validated settings (the caller commits)."""
    for key, value in values.items():
        session.merge(Threshold(key=key, value=json.dumps(value), updated_at=now))


def load_statuses(session: DbSession) -> dict[str, Status]:
    """Return each rule's stored state."""
    rows = session.execute(select(AlertState.rule, AlertState.state, AlertState.since,
                                  AlertState.value))
    return {r.rule: Status(r.state, r.since, r.value) for r in rows}


def save_statuses(session: DbSession, statuses: Mapping[str, Status],
                  readings: Mapping[str, Reading], now: float) -> None:
    """Store each rule's state with the value and threshold it was judged on."""
    for rule, status in statuses.items():
        reading = readings.get(rule)
        session.merge(AlertState(
            rule=rule, state=status.state, since=status.since, value=status.value,
            threshold=reading.threshold if reading else None,
            detail=reading.detail if reading else "", updated_at=now))


def record_changes(session: DbSession, changes: Iterable[Transition],
                   texts: Mapping[str, str], now: float) -> None:
    """Append state changes to the history."""
    session.add_all(AlertEvent(ts=now, rule=c.rule, from_state=c.from_state,
                               to_state=c.to_state, value=c.value, threshold=c.threshold,
                               message=texts.get(c.rule, "")) for c in changes)


def history(session: DbSession, limit: int = 100) -> list[AlertEvent]:
    """Return the newest state changes first."""
    query = select(AlertEvent).order_by(AlertEvent.ts.desc(), AlertEvent.id.desc()).limit(limit)
    return list(session.scalars(query))


def states(session: DbSession) -> dict[str, AlertState]:
    """Return the stored state row of each rule."""
    return {row.rule: row for row in session.scalars(select(AlertState))}
