"""Evaluate the alert rules: read metrics and settings, step the states, record, notify."""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from services.common.topology import Names
from services.dashboard import alert_store, alerts, queries
from services.dashboard.alerts import Reading, Transition
from services.dashboard.histogram import percentile
from services.dashboard.metrics import backlog_queues
from services.dashboard.rollup import bin_start
from services.dashboard.thresholds import Value

log = logging.getLogger(__name__)
RECENT_S = 300  # error rate, latency and 429s are judged over the last 5 minutes
GROWTH_S = 90  # queue growth is the slope of the last 90 s of samples
WEBHOOK_TIMEOUT_S = 2.0

Poster = Callable[[str, str], None]


def _recent_span(now: float, seconds: int) -> tuple[int, float]:
    start = bin_start(now - seconds, 60)
    return start, max(now - start, 1.0)


def read_readings(session: Session, names: Names, values: dict[str, Value],
                  now: float, watching_since: float | None = None,
                  broker: str = "") -> dict[str, Reading]:
    """Return every rule's current value and the threshold it is held to (`watching_since`:
    when the collector began sampling the broker `broker`, if one does)."""
    latest = queries.latest_readings(session, now)
    backlog = {q: latest[q]["depth"] for q in backlog_queues(names) if q in latest}
    start, span = _recent_span(now, RECENT_S)
    recent = queries.totals(session, 60, start)
    limiter_429 = sum(r["rate_limited"] or 0 for r in queries.limiter_rows(session, 60, start))
    hist = {b: n for _, _, b, n in queries.latency_rows(session, 60, start, ("total",))}
    hour_start, hour_span = _recent_span(now, 3600)
    cost_per_hour = queries.totals(session, 60, hour_start)["cost_usd"] * 3600 / hour_span
    baseline = None
    if queries.has_data_before(session, now - 25 * 3600):
        day = queries.totals(session, 900, bin_start(now - 25 * 3600, 900),
                             bin_start(now - 3600, 900))
        baseline = day["cost_usd"] / 24
    dead = latest.get(names.dead, {}).get("depth")
    busiest = max(backlog, key=lambda q: backlog[q]) if backlog else ""

    def t(rule: str) -> float:
        return float(values[rule])

    return {
        "queue_depth": Reading(backlog[busiest] if backlog else None, t("queue_depth"),
                               busiest),
        "queue_growth": Reading(alerts.growth_per_min(queries.depth_history(
            session, backlog_queues(names), now - GROWTH_S)), t("queue_growth")),
        "cost_per_hour": Reading(cost_per_hour, alerts.cost_threshold(
            t("cost_per_hour"), t("cost_spike_factor"), baseline),
            f"24 h baseline ${baseline:,.2f}/h" if baseline else ""),
        "error_rate": Reading(recent["failed"] / recent["count"] * 100 if recent["count"]
                              else 0.0, t("error_rate"), f"{recent['failed']} failed"),
        "latency_p95": Reading(percentile(hist, 0.95) or 0.0, t("latency_p95")),
        "rate_limited": Reading(max(recent["rate_limited"], limiter_429) / (span / 60),
                                t("rate_limited")),
        "dead_letters": Reading(float(dead) if dead is not None else float(recent["dead"]),
                                t("dead_letters"), names.dead),
        # No sample in the window says nothing either way: the rule holds its state.
        "semantic_wrong_hits": Reading(
            alerts.wrong_hit_pct(recent["verified"], recent["verify_agreed"]),
            t("semantic_wrong_hits"), f"{int(recent['verified'])} sampled hits"),
        "broker_unreachable": Reading(alerts.broker_silence_s(
            queries.last_sample_at(session), watching_since, now), t("broker_unreachable"),
            f"RabbitMQ at {broker}" if broker else ""),
    }


def post_webhook(url: str, text: str) -> None:
    """Post Slack-compatible JSON; log failures, never raise."""
    request = urllib.request.Request(url, data=json.dumps({"text": text}).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_S) as response:
            response.read(1024)
    except Exception as exc:  # any network or HTTP fault: the alert is still recorded
        log.warning("alert webhook %s failed: %s", url, exc)


@dataclass
class Evaluator:
    """Step every rule once per call, from the database's own metrics and settings."""

    engine: Engine
    names: Names
    post: Poster = post_webhook
    watching_since: float | None = None  # the collector's start: its broker sampling began
    broker: str = ""  # host:port the collector samples, for the alert's text

    def run_once(self, now: float) -> list[Transition]:
        """Evaluate, store the new states and history, then notify; return the changes."""
        with Session(self.engine) as session:
            values = alert_store.load_values(session)
            readings = read_readings(session, self.names, values, now, self.watching_since,
                                     self.broker)
            statuses, changes = alerts.evaluate(alert_store.load_statuses(session), readings,
                                                values, now)
            texts = {c.rule: alerts.message(c, self.names.ns) for c in changes}
            alert_store.save_statuses(session, statuses, readings, now)
            alert_store.record_changes(session, changes, texts, now)
            session.commit()
        url = str(values["webhook_url"])
        for change in changes:
            log.log(logging.WARNING if change.notice else logging.INFO, "%s", texts[change.rule])
            if url and change.notice:
                self.post(url, texts[change.rule])
        return changes
