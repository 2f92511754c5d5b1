"""Call an OpenAI-compatible provider; translate the SDK's errors into agentq's own."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import openai

from services.common.config import AgentqConfig, ModelEntry, ProviderConfig
from services.common.models import Task, Usage
from services.common.tokens import counter, tokenizer_for


class ProviderError(Exception):
    """A provider call failed; `retryable` says whether trying again may help."""

    code = "provider_error"
    retryable = False

    def __init__(self, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.headers: Mapping[str, str] = headers or {}


class ProviderRateLimited(ProviderError):
    code = "rate_limited"
    retryable = True


class CapacityExhausted(ProviderRateLimited):
    """The task waited for provider capacity as long as AGENTQ_RATE_LIMIT_WAIT_S allows."""

    retryable = False


class ProviderUnavailable(ProviderError):
    code = "provider_unavailable"
    retryable = True


class ProviderTimeout(ProviderError):
    code = "timeout"
    retryable = True


class ProviderRejected(ProviderError):
    code = "provider_rejected"


@dataclass(frozen=True)
class Completion:
    text: str
    model: str
    usage: Usage
    finish_reason: str
    headers: Mapping[str, str] = field(default_factory=dict)
    entry: ModelEntry | None = None  # the tier's model entry that answered


@dataclass(frozen=True)
class Where:
    """What a provider error names: which provider, model and URL, and the timeout in force."""

    provider: str
    model: str
    base_url: str
    timeout_s: float

    def __str__(self) -> str:
        return f"provider {self.provider!r}, model {self.model!r} at {self.base_url}"


_SDK_PREFIX = re.compile(r"^Error code: \d{3} - ")


def _detail(exc: openai.APIStatusError) -> str:
    """Return the provider's own words for a failed call, without the SDK's status prefix."""
    body = exc.body
    error = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    if isinstance(error, str) and error:
        return error
    text = _SDK_PREFIX.sub("", exc.message)
    return exc.response.reason_phrase if text in ("", "None") else text


def translate(exc: openai.OpenAIError, where: Where) -> ProviderError:
    """Turn the SDK's error into agentq's own, naming the provider, model and URL."""
    if isinstance(exc, openai.APITimeoutError):
        return ProviderTimeout(f"{where}: no answer within {where.timeout_s:g} s")
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc
        return ProviderUnavailable(f"{where}: connection failed: {cause}")
    if isinstance(exc, openai.APIStatusError):
        headers = dict(exc.response.headers)
        status = exc.status_code
        message = f"{where}: HTTP {status}: {_detail(exc)}"
        if status == 429:
            return ProviderRateLimited(message, headers)
        if status >= 500 or status in (408, 409):
            return ProviderUnavailable(message, headers)
        return ProviderRejected(message, headers)
    return ProviderError(f"{where}: {exc}")


def effective_timeout_s(provider: ProviderConfig, default_timeout_s: float) -> float:
    """Return a provider's timeout: its own `timeout_s` when the tier table sets it, else
    AGENTQ_LLM_TIMEOUT_S."""
    return provider.timeout_s if "timeout_s" in provider.model_fields_set else default_timeout_s


class Providers:
    """One AsyncOpenAI client per configured provider, made once and reused."""

    def __init__(self, config: AgentqConfig, default_timeout_s: float) -> None:
        self._clients: dict[str, openai.AsyncOpenAI] = {}
        self._where: dict[str, tuple[str, float]] = {}  # provider -> base URL, timeout
        self._providers = dict(config.providers)
        # The SDK's own HTTP client class and Limits type: openai 1.x ships on httpx, 3.x on
        # httpx2, and a client of the other library is refused, so name neither here.
        limits = type(openai.DEFAULT_CONNECTION_LIMITS)(
            max_connections=512, max_keepalive_connections=128)
        for name, provider in config.providers.items():
            api_key = provider.api_key or (
                os.environ.get(provider.api_key_env, "") if provider.api_key_env else "")
            # An unset api_key_env is said once, by the start-up check (check_providers).
            timeout_s = effective_timeout_s(provider, default_timeout_s)
            self._where[name] = (provider.base_url, timeout_s)
            self._clients[name] = openai.AsyncOpenAI(
                base_url=provider.base_url, api_key=api_key or "agentq-no-key",
                max_retries=0,  # retries are agentq's, through the delay queues
                timeout=timeout_s,
                default_headers=provider.extra_headers or None,
                default_query=provider.extra_query or None,
                http_client=openai.DefaultAsyncHttpxClient(limits=limits))
        load_tokenizers(config)

    async def complete(self, entry: ModelEntry, task: Task) -> Completion:
        """Run one chat completion for a task on a model entry."""
        client = self._clients[entry.provider]
        kwargs = call_options(self._providers[entry.provider], entry, task)
        try:
            raw = await client.chat.completions.with_raw_response.create(
                model=entry.model, messages=_messages(task), **kwargs)
        except openai.OpenAIError as exc:
            raise translate(exc, Where(entry.provider, entry.model,
                                       *self._where[entry.provider])) from None
        completion = raw.parse()
        usage = completion.usage
        choice = completion.choices[0]
        return Completion(
            text=choice.message.content or "", model=completion.model or entry.model,
            usage=Usage(prompt_tokens=usage.prompt_tokens if usage else 0,
                        completion_tokens=usage.completion_tokens if usage else 0),
            finish_reason=choice.finish_reason or "", headers=dict(raw.headers), entry=entry)

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()


def load_tokenizers(config: AgentqConfig) -> None:
    """Load the tokenizer of every model now, at start-up: each call's TPM estimate counts
    with it, and the first would otherwise pay for loading it (o200k: ~1.7 s of CPU) in the
    middle of the first tasks' latency."""
    for tier in config.tiers.values():
        for entry in tier.models:
            counter(entry.tokenizer or tokenizer_for(entry.model))


def call_options(provider: ProviderConfig, entry: ModelEntry, task: Task) -> dict[str, Any]:
    """Return a task's sampling parameters as this provider and model accept them."""
    options: dict[str, Any] = {}
    temperature = (entry.supports_temperature if entry.supports_temperature is not None
                   else provider.supports_temperature)
    if temperature:
        options["temperature"] = task.temperature
    if task.max_tokens is not None:
        options[entry.max_tokens_param or provider.max_tokens_param] = task.max_tokens
    return options


def _messages(task: Task) -> Any:
    # The SDK types each role's message apart; ours are already the chat format it sends.
    return [m.model_dump() for m in task.messages]
