"""Ask an OpenAI-compatible server which models it serves (`GET /v1/models`), and choose the
built-in tiers' models from that list.

`choose_tier_models` is pure; `fetch_models` is the one network call, used at start-up by the
built-in tier table (AGENTQ_MODELS_FROM_PROVIDER=1) and by the provider checks.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence

FETCH_TIMEOUT_S = 3.0
# Models a chat tier cannot use, by a word in their name.
_NOT_CHAT = ("embed", "whisper", "tts", "dall-e", "moderation", "rerank", "transcribe")


class NotAnswering(Exception):
    """Nothing answered at the base URL; the message says why (refused, unknown host...)."""


def unreachable_reason(exc: BaseException, timeout_s: float) -> str:
    """Say in a few words why a URL could not be reached."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, socket.gaierror):
        return "host not found"
    if isinstance(reason, TimeoutError | socket.timeout):
        return f"no answer within {timeout_s:.0f} s"
    if isinstance(exc, ValueError):
        return f"not a usable URL ({exc})"
    return str(reason) or type(reason).__name__


def models_url(base_url: str, query: Mapping[str, object] | None = None) -> str:
    """Return `<base_url>/models` with the provider's extra query parameters."""
    url = base_url.rstrip("/") + "/models"
    if query:
        # As the SDK sends them: booleans in lower case.
        pairs = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in query.items()}
        url += "?" + urllib.parse.urlencode(pairs)
    return url


def fetch_models(base_url: str, api_key: str = "", headers: Mapping[str, str] | None = None,
                 query: Mapping[str, object] | None = None,
                 timeout_s: float = FETCH_TIMEOUT_S) -> list[str] | None:
    """Return the ids `GET <base_url>/models` lists, None when the server answers without a
    list (401, 404, not JSON); raise NotAnswering when nothing answers."""
    request = urllib.request.Request(models_url(base_url, query), headers={
        **({"Authorization": f"Bearer {api_key}"} if api_key else {}), **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            payload = response.read()
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise NotAnswering(unreachable_reason(exc, timeout_s)) from None
    try:
        data = json.loads(payload)["data"]
        return [str(item["id"]) for item in data]
    except (ValueError, KeyError, TypeError):
        return None


def chat_models(available: Sequence[str]) -> list[str]:
    """Return the models of a list that can answer a chat call, in the list's order."""
    return [m for m in available if not any(word in m.lower() for word in _NOT_CHAT)]


def choose_tier_models(available: Sequence[str], wanted: Mapping[str, str]
                       ) -> tuple[dict[str, str], list[str]]:
    """Choose a model per tier (`wanted` in tier order, cheap first) from what a provider
    lists, and say what was changed.

    A wanted model the provider has stays; the other tiers take the provider's other chat
    models in its order; with fewer models than tiers, a tier shares the model of the tier
    below it (the cheapest tier: the one above), so every tier answers.
    """
    models = chat_models(available)
    if not models:
        return dict(wanted), ["the provider lists no chat model: the tiers keep "
                              + ", ".join(f"{t} {m}" for t, m in wanted.items())]
    chosen = {tier: name for tier, name in wanted.items() if name in models}
    spare = [m for m in models if m not in chosen.values()]
    tiers = list(wanted)
    for tier in tiers:
        if tier not in chosen and spare:
            chosen[tier] = spare.pop(0)
    notes = []
    for index, tier in enumerate(tiers):
        if tier in chosen:
            continue
        below = [chosen[t] for t in reversed(tiers[:index]) if t in chosen]
        above = [chosen[t] for t in tiers[index + 1:] if t in chosen]
        chosen[tier] = (below or above)[0]
        notes.append(f"tier {tier}: the provider lists {len(models)} chat model(s), so it "
                     f"shares {chosen[tier]}")
    for tier in tiers:
        if chosen[tier] != wanted[tier] and not any(n.startswith(f"tier {tier}:") for n in notes):
            notes.append(f"tier {tier}: {wanted[tier]} is not listed by the provider; "
                         f"using {chosen[tier]}")
    return {tier: chosen[tier] for tier in tiers}, notes
