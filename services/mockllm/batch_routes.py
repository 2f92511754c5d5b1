"""Answer OpenAI's Files and Batch APIs: files uploaded, read, deleted; batches run and listed."""

from __future__ import annotations

from typing import Literal

from aiohttp import BodyPartReader, web
from pydantic import BaseModel, ConfigDict, ValidationError

from services.mockllm.batch_store import MAX_LIST, BatchFate
from services.mockllm.files import parse_batch_input
from services.mockllm.protocol import (
    InvalidRequest,
    auth_error,
    error_response,
    from_validation,
    invalid_request,
    read_json,
)
from services.mockllm.state import STATE

DEFAULT_LIST = 20


class CreateBatch(BaseModel):
    """Validate a POST /v1/batches body."""

    model_config = ConfigDict(strict=True, extra="forbid")

    input_file_id: str
    endpoint: Literal["/v1/chat/completions", "/v1/embeddings"]
    completion_window: Literal["24h"]
    metadata: dict[str, str] | None = None


def _missing(kind: str, ident: str) -> web.Response:
    message = f"No such {kind}: '{ident}'."
    return error_response(404, message, "invalid_request_error", code="not_found")


async def upload_file(request: web.Request) -> web.Response:
    """Answer POST /v1/files: store a batch input file after checking every line."""
    if (refused := auth_error(request)) is not None:
        return refused
    try:
        filename, purpose, content = await _read_upload(request)
        if purpose != "batch":
            message = f"Invalid purpose {purpose!r}: the simulated provider accepts only 'batch'."
            raise InvalidRequest(message, "purpose", "invalid_value")
        parse_batch_input(content)
    except InvalidRequest as exc:
        return invalid_request(exc)
    stored = request.app[STATE].files.add(filename, "batch", content)
    return web.json_response(stored.to_json())


async def _read_upload(request: web.Request) -> tuple[str, str | None, bytes]:
    if not request.content_type.startswith("multipart/"):
        raise InvalidRequest("Upload the file as multipart/form-data.", "file")
    reader = await request.multipart()
    filename, purpose, content = "upload.jsonl", None, None
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            continue  # a nested multipart is not part of the Files API
        if part.name == "purpose":
            purpose = (await part.text()).strip()
        elif part.name == "file":
            filename = part.filename or filename
            content = bytes(await part.read())
    if content is None:
        raise InvalidRequest("Missing the 'file' part of the upload.", "file")
    return filename, purpose, content


async def retrieve_file(request: web.Request) -> web.Response:
    """Answer GET /v1/files/{file_id}."""
    file_id = request.match_info["file_id"]
    stored = request.app[STATE].files.get(file_id)
    return _missing("file", file_id) if stored is None else web.json_response(stored.to_json())


async def file_content(request: web.Request) -> web.Response:
    """Answer GET /v1/files/{file_id}/content with the file's bytes."""
    file_id = request.match_info["file_id"]
    stored = request.app[STATE].files.get(file_id)
    if stored is None:
        return _missing("file", file_id)
    return web.Response(body=stored.content, content_type="application/octet-stream")


async def delete_file(request: web.Request) -> web.Response:
    """Answer DELETE /v1/files/{file_id}."""
    file_id = request.match_info["file_id"]
    if not request.app[STATE].files.delete(file_id):
        return _missing("file", file_id)
    return web.json_response({"id": file_id, "object": "file", "deleted": True})


async def create_batch(request: web.Request) -> web.Response:
    """Answer POST /v1/batches: start a batch over an uploaded input file."""
    if (refused := auth_error(request)) is not None:
        return refused
    state = request.app[STATE]
    try:
        body = CreateBatch.model_validate(await read_json(request))
    except InvalidRequest as exc:
        return invalid_request(exc)
    except ValidationError as exc:
        return invalid_request(from_validation(exc))
    stored = state.files.get(body.input_file_id)
    if stored is None or stored.purpose != "batch":
        message = f"Invalid input_file_id {body.input_file_id!r}: no batch input file has it."
        return error_response(
            400, message, "invalid_request_error", param="input_file_id", code="invalid_file"
        )
    lines = parse_batch_input(stored.content)  # checked at upload, so this cannot fail
    settings = state.settings
    fate = BatchFate(settings.batch_completion_s, settings.batch_error_rate, settings.batch_expire)
    batch = state.batches.create(stored.id, body.endpoint, lines, fate, state.rng, body.metadata)
    state.stats.record_batch([line.custom_id for line in lines])
    return web.json_response(state.batches.to_json(batch))


async def retrieve_batch(request: web.Request) -> web.Response:
    """Answer GET /v1/batches/{batch_id}."""
    store = request.app[STATE].batches
    batch_id = request.match_info["batch_id"]
    batch = store.get(batch_id)
    return _missing("batch", batch_id) if batch is None else web.json_response(store.to_json(batch))


async def cancel_batch(request: web.Request) -> web.Response:
    """Answer POST /v1/batches/{batch_id}/cancel."""
    store = request.app[STATE].batches
    batch_id = request.match_info["batch_id"]
    batch = store.get(batch_id)
    if batch is None:
        return _missing("batch", batch_id)
    if not store.cancel(batch):
        message = f"Cannot cancel a batch with status '{store.status(batch)}'."
        return error_response(409, message, "invalid_request_error", code="batch_not_cancellable")
    return web.json_response(store.to_json(batch))


async def list_batches(request: web.Request) -> web.Response:
    """Answer GET /v1/batches?limit=&after=, newest first."""
    store = request.app[STATE].batches
    raw = request.query.get("limit", str(DEFAULT_LIST))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIST:
        message = f"Invalid 'limit': expected an integer from 1 to {MAX_LIST}, got {raw!r}."
        return error_response(
            400, message, "invalid_request_error", param="limit", code="invalid_value"
        )
    chosen, has_more = store.page(int(raw), request.query.get("after"))
    data = [store.to_json(batch) for batch in chosen]
    return web.json_response(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": has_more,
        }
    )


ROUTES = [
    web.post("/v1/files", upload_file),
    web.get("/v1/files/{file_id}", retrieve_file),
    web.get("/v1/files/{file_id}/content", file_content),
    web.delete("/v1/files/{file_id}", delete_file),
    web.post("/v1/batches", create_batch),
    web.get("/v1/batches", list_batches),
    web.get("/v1/batches/{batch_id}", retrieve_batch),
    web.post("/v1/batches/{batch_id}/cancel", cancel_batch),
]
