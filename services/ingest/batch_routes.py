"""OpenAI's Files and Batch APIs on ingest, so the openai SDK's `client.files.*` and
`client.batches.*` work against agentq with `base_url` = ingest's `/v1`.

Errors come in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with
`field` = `param` as in the rest of ingest's errors.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from flask import Blueprint, Response, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.exc import SQLAlchemyError

from services.common.batch_format import BatchFileError, first_problem
from services.ingest.batch_service import BatchService, file_object
from services.ingest.routes import UNAVAILABLE_RETRY_AFTER_S, authenticate, caller

log = logging.getLogger(__name__)

EXTENSION = "agentq.batches"
MAX_LIST = 100
KIND_KEY = "agentq_kind"  # batch metadata key naming the kind of every line's task

batches = Blueprint("batches", __name__)


class CreateBatch(BaseModel):
    """Validate a POST /v1/batches body."""

    model_config = ConfigDict(strict=True, extra="forbid")

    input_file_id: str = Field(min_length=1, max_length=64)
    endpoint: Literal["/v1/chat/completions"]
    completion_window: Literal["24h"]
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    output_expires_after: dict[str, Any] | None = None  # accepted; files are kept

    def kind(self) -> str:
        return (self.metadata or {}).get(KIND_KEY, "chat")


def openai_error(status: int, message: str, param: str | None = None,
                 code: str | None = None, kind: str = "invalid_request_error") -> Response:
    """Build an error in OpenAI's shape (plus ingest's `field`)."""
    response = jsonify({"error": {"message": message, "type": kind, "param": param,
                                  "code": code, "field": param}})
    response.status_code = status
    return response


def _service() -> BatchService:
    service: BatchService = current_app.extensions[EXTENSION]
    return service


def _missing(what: str, ident: str) -> Response:
    return openai_error(404, f"No such {what}: {ident!r}.", "id", "not_found")


@batches.before_request
def _gate() -> Response | None:
    if request.endpoint == "batches.upload_file":  # a batch file may exceed a task body
        request.max_content_length = _service().max_file_bytes
    return authenticate()


@batches.errorhandler(SQLAlchemyError)
def _store_down(exc: SQLAlchemyError) -> ResponseReturnValue:
    log.warning("batch API: the store did not answer: %r", exc)
    response = openai_error(503, "the store is unavailable", None, "unavailable", "server_error")
    response.headers["Retry-After"] = str(UNAVAILABLE_RETRY_AFTER_S)
    return response


@batches.post("/v1/files")
def upload_file() -> ResponseReturnValue:
    """Store a JSONL batch input file after checking every line."""
    if not request.mimetype.startswith("multipart/"):
        return openai_error(400, "Upload the file as multipart/form-data.", "file")
    upload = request.files.get("file")
    if upload is None:
        return openai_error(400, "Missing the 'file' part of the upload.", "file")
    purpose = request.form.get("purpose")
    if purpose != "batch":
        return openai_error(400, f"Invalid purpose {purpose!r}: agentq accepts only 'batch'.",
                            "purpose", "invalid_value")
    content = upload.read(_service().max_file_bytes + 1)
    if len(content) > _service().max_file_bytes:
        return openai_error(413, f"The file exceeds {_service().max_file_bytes} bytes.", "file",
                            "too_large")
    try:
        return jsonify(_service().upload(caller(), upload.filename or "upload.jsonl", content))
    except BatchFileError as exc:
        return openai_error(400, exc.message, exc.param, exc.code)


@batches.get("/v1/files/<file_id>")
def retrieve_file(file_id: str) -> ResponseReturnValue:
    """Return a file object."""
    row = _service().file(caller(), file_id)
    return _missing("file", file_id) if row is None else jsonify(file_object(row))


@batches.get("/v1/files/<file_id>/content")
def file_content(file_id: str) -> ResponseReturnValue:
    """Return a file's bytes: an input file, or a batch's output or error file."""
    row = _service().file(caller(), file_id, content=True)
    if row is None:
        return _missing("file", file_id)
    return Response(bytes(row["content"]), content_type="application/jsonl")


@batches.post("/v1/batches")
def create_batch() -> ResponseReturnValue:
    """Start a batch over an uploaded input file: every line becomes a task."""
    try:
        body = CreateBatch.model_validate(request.get_json(force=True, silent=True))
    except ValidationError as exc:
        param, message = first_problem(exc)
        return openai_error(400, message, param or "body", "invalid_value")
    kind = body.kind()
    if not (0 < len(kind.encode()) <= 64 and all(c.isalnum() or c in "_.-" for c in kind)):
        return openai_error(400, f"metadata.{KIND_KEY}: not a valid kind: {kind!r}",
                            f"metadata.{KIND_KEY}", "invalid_value")
    try:
        batch = _service().create(caller(), body.input_file_id, body.completion_window,
                                  body.metadata, kind)
    except BatchFileError as exc:  # checked at upload; only a change of the rules gets here
        return openai_error(400, f"input_file_id: {exc.message}", "input_file_id", exc.code)
    if batch is None:
        return openai_error(400, f"Invalid input_file_id {body.input_file_id!r}: no batch "
                            "input file has it.", "input_file_id", "invalid_file")
    return jsonify(batch)


@batches.get("/v1/batches/<batch_id>")
def retrieve_batch(batch_id: str) -> ResponseReturnValue:
    """Return where a batch stands (its result files once every line is done)."""
    batch = _service().view(caller(), batch_id)
    return _missing("batch", batch_id) if batch is None else jsonify(batch)


@batches.post("/v1/batches/<batch_id>/cancel")
def cancel_batch(batch_id: str) -> ResponseReturnValue:
    """Stop accepting a batch's lines; tasks already running finish and are reported."""
    batch, cancelled = _service().cancel(caller(), batch_id)
    if batch is None:
        return _missing("batch", batch_id)
    if not cancelled:
        return openai_error(409, f"Cannot cancel a batch with status {batch['status']!r}.",
                            "id", "batch_not_cancellable")
    return jsonify(batch)


@batches.get("/v1/batches")
def list_batches() -> ResponseReturnValue:
    """List the caller's batches, newest first (`limit` 1..100, default 20; `after`)."""
    raw = request.args.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIST:
        return openai_error(400, f"Invalid 'limit': expected an integer from 1 to {MAX_LIST}, "
                            f"got {raw!r}.", "limit", "invalid_value")
    return jsonify(_service().page(caller(), int(raw), request.args.get("after")))
