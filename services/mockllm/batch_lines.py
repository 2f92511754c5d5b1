"""Answer batch lines as the live endpoints would, and shape the output and error records.

Each line gets the same answer and usage a live chat or embeddings call with that body
gets (answers.py through protocol.py), wrapped the way OpenAI's batch output files wrap it.
"""

from __future__ import annotations

import os
from typing import Any

from services.common.batch_format import not_run_record, output_record
from services.common.tokens import count_text
from services.mockllm.answers import answer
from services.mockllm.files import BatchLine
from services.mockllm.protocol import (
    SERVER_ERROR,
    InvalidRequest,
    completion_body,
    embeddings_body,
    parse_chat,
    parse_embeddings,
)


def run_line(line: BatchLine, fail: bool) -> dict[str, Any]:
    """Return the output record of one line: its answer, or the error a live call would get."""
    # As live: a body is checked first, so a bad one gets its 400 even on an unlucky draw.
    try:
        body = _answer_body(line)
    except InvalidRequest as exc:
        error = {
            "message": exc.message,
            "type": "invalid_request_error",
            "param": exc.param,
            "code": exc.code,
        }
        return _record(line.custom_id, 400, {"error": error})
    if fail:
        error = {"message": SERVER_ERROR, "type": "server_error", "param": None, "code": None}
        return _record(line.custom_id, 500, {"error": error})
    return _record(line.custom_id, 200, body)


def not_run(line: BatchLine, status: str) -> dict[str, Any]:
    """Return the error record of a line the batch never ran (expired or cancelled)."""
    return not_run_record(_request_id("batch_req_"), line.custom_id, status)


def is_success(record: dict[str, Any]) -> bool:
    """Say whether a record belongs in the output file (a 2xx answer) or the error file."""
    response = record.get("response")
    return isinstance(response, dict) and response.get("status_code") == 200


def _answer_body(line: BatchLine) -> dict[str, Any]:
    if line.url == "/v1/embeddings":
        return embeddings_body(parse_embeddings(line.body))
    chat = parse_chat(line.body)
    reply = answer(chat.messages, chat.model, chat.max_tokens)
    return completion_body(chat, reply, count_text(reply.text) * chat.n)


def _record(custom_id: str, status_code: int, body: dict[str, Any]) -> dict[str, Any]:
    return output_record(_request_id("batch_req_"), custom_id, status_code,
                         _request_id("req_"), body)


def _request_id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()
