"""Prometheus exposition of the dashboard's figures (`/metrics`)."""

from __future__ import annotations

import time

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST

from services.common.topology import Names
from services.dashboard import prom
from services.dashboard.models import db
from services.dashboard.views.access import settings

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics() -> Response:
    """Return queue depths, rates, latency percentiles, cost and alerts as gauges."""
    body = prom.render(db.session, Names(settings().namespace), time.time())
    return Response(body, content_type=CONTENT_TYPE_LATEST)
