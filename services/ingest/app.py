"""The HTTP door of ingest: the Flask application factory that gunicorn serves."""

from __future__ import annotations

import os
import time

from flask import Flask, Response, current_app, g, request
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from werkzeug.exceptions import HTTPException

from services.common.clients import sync_redis_client
from services.common.settings import Settings
from services.common.store import make_engine
from services.common.topology import Names
from services.ingest.batch_accept import BatchAcceptor
from services.ingest.batch_routes import EXTENSION as BATCHES
from services.ingest.batch_routes import batches
from services.ingest.batch_service import BatchService
from services.ingest.batch_store import create_batch_tables
from services.ingest.metrics import make_metrics
from services.ingest.publisher import Publisher
from services.ingest.routes import EXTENSION, Ingest, error_response, ops, tasks

DISCARD_LIMIT = 16 * 1024 * 1024
_ERROR_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                405: "method_not_allowed", 413: "too_large", 500: "internal"}


def _exposition_registry(own: CollectorRegistry) -> CollectorRegistry:
    # Under gunicorn each worker counts on its own; serve.py points prometheus_client at a
    # shared directory so that any worker's /metrics reports the sum of all of them.
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return own
    shared = CollectorRegistry()
    MultiProcessCollector(shared, path=directory)
    return shared


def _discard_body() -> None:
    """Read an oversized body to its end, so the client gets the 413 instead of a reset.

    A client sends the whole body before reading the answer; closing on it mid-send breaks
    its pipe. Bodies past DISCARD_LIMIT are cut off rather than read.
    """
    stream = request.environ.get("wsgi.input")
    left = min(request.content_length or 0, DISCARD_LIMIT)
    while stream is not None and left > 0:
        chunk = stream.read(min(left, 64 * 1024))
        if not chunk:
            break
        left -= len(chunk)


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    if status == 413:
        _discard_body()
        return error_response(413, "too_large", f"the body exceeds {request.max_content_length} "
                              "bytes", "body")
    message = "internal error" if status >= 500 else (exc.description or exc.name)
    response = error_response(status, _ERROR_CODES.get(status, "error"), message)
    for name, value in exc.get_headers():  # keeps e.g. the Allow header of a 405
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def _start_timer() -> None:
    g.agentq_started = time.perf_counter()


def _observe(response: Response) -> Response:
    ingest: Ingest = current_app.extensions[EXTENSION]
    endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
    started = g.get("agentq_started", time.perf_counter())
    ingest.metrics.request_seconds.labels(request.method, endpoint,
                                          str(response.status_code)).observe(
        time.perf_counter() - started)
    if request.endpoint == "tasks.submit" and response.status_code >= 400:
        ingest.metrics.rejected.labels(door="http", reason=str(response.status_code)).inc()
    return response


def create_app(settings: Settings | None = None) -> Flask:
    """Build the ingest app: clients, topology, routes, JSON errors and metrics."""
    settings = settings or Settings()
    keys = settings.key_table()  # a bad key entry stops ingest here, before any connection
    names = Names(settings.namespace)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    publisher = Publisher(settings.amqp_url, names)
    # A fresh broker gets its exchanges and queues now; if it is down, the first publish retries.
    publisher.ensure_topology()
    metrics = make_metrics(CollectorRegistry())
    engine = make_engine(settings.database_url)
    app.extensions[EXTENSION] = Ingest(
        settings=settings, engine=engine, publisher=publisher,
        redis=sync_redis_client(settings.redis_url),
        metrics=metrics, exposition=_exposition_registry(metrics.registry), keys=keys)
    app.register_blueprint(tasks)
    app.register_blueprint(ops)
    create_batch_tables(engine)
    acceptor = BatchAcceptor(engine, publisher)
    app.extensions[BATCHES] = BatchService(engine, acceptor, settings.batch_file_max_bytes)
    app.register_blueprint(batches)
    acceptor.wake_if_pending()  # lines a dead ingest left unaccepted are taken up
    app.register_error_handler(HTTPException, _http_error)
    app.before_request(_start_timer)
    app.after_request(_observe)
    return app
