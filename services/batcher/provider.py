"""The provider's Batch API through the openai SDK: upload, create, find, retrieve, download.

Library errors become `BatchApiError` here, with whether trying again can help: a 4xx other
than 408/409/429 (no Batch API at this URL, a refused file) is permanent and sends the
batch's tasks live; anything else is tried again at the next cycle.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass

import openai

from services.common.config import AgentqConfig

GROUP_KEY = "agentq_group"  # the batch's metadata key holding agentq's group id
_TRANSIENT_STATUSES = frozenset({408, 409, 429})


class BatchApiError(Exception):
    """A Batch API call failed; `permanent` when trying again cannot help."""

    def __init__(self, message: str, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class BatchStatus:
    """What the batcher reads of a provider's Batch object."""

    batch_id: str
    status: str
    output_file_id: str | None
    error_file_id: str | None
    completed: int
    failed: int
    created_at: float
    ended_at: float | None


def _error(exc: openai.OpenAIError, what: str) -> BatchApiError:
    status = exc.status_code if isinstance(exc, openai.APIStatusError) else None
    permanent = status is not None and 400 <= status < 500 and status not in _TRANSIENT_STATUSES
    return BatchApiError(f"{what}: {exc}", permanent)


class BatchApi:
    """One AsyncOpenAI client per provider that speaks the Batch API."""

    def __init__(self, config: AgentqConfig, timeout_s: float = 60.0) -> None:
        self._clients: dict[str, openai.AsyncOpenAI] = {}
        for name, provider in config.providers.items():
            if not provider.batch:
                continue
            key = provider.api_key or (os.environ.get(provider.api_key_env, "")
                                       if provider.api_key_env else "")
            self._clients[name] = openai.AsyncOpenAI(
                base_url=provider.base_url, api_key=key or "agentq-no-key", max_retries=1,
                timeout=timeout_s, default_headers=provider.extra_headers or None,
                default_query=provider.extra_query or None)

    def _client(self, provider: str) -> openai.AsyncOpenAI:
        try:
            return self._clients[provider]
        except KeyError:
            raise BatchApiError(f"provider {provider!r} has no Batch API (batch = false)",
                                permanent=True) from None

    async def upload(self, provider: str, name: str, data: bytes) -> str:
        """Upload a JSONL input file; return its id."""
        try:
            file = await self._client(provider).files.create(
                file=(name, data, "application/jsonl"), purpose="batch")
        except openai.OpenAIError as exc:
            raise _error(exc, f"{provider}: upload of {name}") from None
        return file.id

    async def create(self, provider: str, input_file_id: str, group_id: str) -> str:
        """Create the batch, tagged with agentq's group id; return the provider's id."""
        try:
            batch = await self._client(provider).batches.create(
                input_file_id=input_file_id, endpoint="/v1/chat/completions",
                completion_window="24h", metadata={GROUP_KEY: group_id})
        except openai.OpenAIError as exc:
            raise _error(exc, f"{provider}: create batch {group_id}") from None
        return batch.id

    async def find(self, provider: str, group_ids: Collection[str],
                   created_after: float) -> dict[str, str]:
        """Return the provider's batches tagged with these group ids (newest first, reading
        back to `created_after`): group id -> batch id."""
        wanted, found = set(group_ids), {}
        try:
            async for batch in self._client(provider).batches.list(limit=100):
                group = (batch.metadata or {}).get(GROUP_KEY)
                if group in wanted:
                    found[group] = batch.id
                if len(found) == len(wanted) or batch.created_at < created_after:
                    break
        except openai.OpenAIError as exc:
            raise _error(exc, f"{provider}: list batches") from None
        return found

    async def retrieve(self, provider: str, batch_id: str) -> BatchStatus:
        try:
            batch = await self._client(provider).batches.retrieve(batch_id)
        except openai.OpenAIError as exc:
            raise _error(exc, f"{provider}: retrieve {batch_id}") from None
        counts = batch.request_counts
        ended = [t for t in (batch.completed_at, batch.failed_at, batch.expired_at,
                             batch.cancelled_at) if t]
        return BatchStatus(batch.id, batch.status, batch.output_file_id, batch.error_file_id,
                           counts.completed if counts else 0, counts.failed if counts else 0,
                           float(batch.created_at), float(max(ended)) if ended else None)

    async def content(self, provider: str, file_id: str | None) -> str:
        """Return a result file's text ("" for none)."""
        if not file_id:
            return ""
        try:
            response = await self._client(provider).files.content(file_id)
        except openai.OpenAIError as exc:
            raise _error(exc, f"{provider}: content of {file_id}") from None
        return response.text

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
