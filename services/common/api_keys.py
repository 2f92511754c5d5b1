"""API keys bound to tenants: parse the configured digests, and say whose a bearer key is.

Keys are configured by their SHA-256 digest, never in clear, in an `[api_keys]` table that
maps a tenant to its digests, in the tier table (`agentq.toml`) or in a keys file
(`AGENTQ_API_KEYS_FILE`, the same TOML shape):

    [api_keys]
    acme = ["sha256:9f86d0…"]             # keys of tenant acme
    "*" = ["sha256:60303a…"]              # admin keys: every tenant

`AGENTQ_API_KEYS` (comma-separated) is read too: a bare entry is an admin key in clear (the
old form, hashed in memory at load), and `tenant:sha256:<hex>` is a tenant's digest
(`*:sha256:<hex>` an admin one). `agentq keys new --tenant T` makes a key and its line.
No key configured anywhere = ingest is open, as before.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict

ADMIN = "*"  # the tenant of an admin key: reads and submits for every tenant
DIGEST_PREFIX = "sha256:"
KEY_PREFIX = "aq_"
TENANT_PATTERN = re.compile(r"^[\w.\-]{1,64}$")  # as Task.tenant
_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
_TOML_BARE_KEY = re.compile(r"^[A-Za-z0-9_\-]+$")
_TENANT_DIGEST = re.compile(r"^([^:\s]+):(sha256:[0-9a-fA-F]{64})$")


class KeysError(ValueError):
    """A configured key entry that cannot be used."""


def digest_of(key: str) -> bytes:
    """Hash a key for storage and comparison.

    One unsalted SHA-256 is enough here: the keys agentq hands out are 256 random bits, so
    there is nothing to guess from a digest and no need for a slow password hash.
    """
    return hashlib.sha256(key.encode()).digest()


def parse_digest(text: str) -> bytes:
    """Turn `sha256:<64 hex>` into the digest's bytes."""
    match = _DIGEST.match(text.strip().lower())
    if match is None:
        raise KeysError(f"{text[:20]!r}… is not 'sha256:' followed by 64 hex digits")
    return bytes.fromhex(match.group(1))


def check_tenant(tenant: str) -> str:
    if tenant != ADMIN and not TENANT_PATTERN.match(tenant):
        raise KeysError(f"{tenant!r} is not a tenant name (letters, digits, _ . -) nor '*'")
    return tenant


class KeyEntry(BaseModel):
    """One configured key: its digest and the tenant it belongs to."""

    model_config = ConfigDict(frozen=True)

    tenant: str
    digest: bytes


class KeyTable(BaseModel):
    """Every configured key; empty = open (no key asked for)."""

    model_config = ConfigDict(frozen=True)

    entries: tuple[KeyEntry, ...] = ()

    @property
    def open(self) -> bool:
        return not self.entries

    def tenant_for(self, key: str) -> str | None:
        """Return the tenant a bearer key belongs to (`*` for an admin key), or None.

        The key's digest is compared with every configured digest in constant time, without
        stopping at a match, so timing tells neither which entry matched nor how much of it.
        """
        digest = digest_of(key)
        found: str | None = None
        for entry in self.entries:
            if hmac.compare_digest(digest, entry.digest) and found is None:
                found = entry.tenant
        return found


def entries_from_table(table: Mapping[str, Iterable[str]]) -> list[KeyEntry]:
    """Read an `[api_keys]` table: tenant (or "*") → list of `sha256:<hex>` digests."""
    entries = []
    for tenant, digests in table.items():
        if not isinstance(digests, list) or not all(isinstance(d, str) for d in digests):
            raise KeysError(f"{tenant}: give a list of 'sha256:<hex>' strings")
        for text in digests:
            entries.append(KeyEntry(tenant=check_tenant(tenant), digest=parse_digest(text)))
    return entries


def entries_from_env(value: str) -> list[KeyEntry]:
    """Read AGENTQ_API_KEYS: bare keys are admin keys; `tenant:sha256:<hex>` a tenant's."""
    entries = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        match = _TENANT_DIGEST.match(item)
        if match is None and _looks_like_digest(item):
            # Not taken for a key in clear: that would make the mistyped text an admin key.
            raise KeysError(f"{item[:24]!r}… is neither a key nor 'tenant:sha256:<64 hex>'")
        if match is None:
            entries.append(KeyEntry(tenant=ADMIN, digest=digest_of(item)))
        else:
            entries.append(KeyEntry(tenant=check_tenant(match.group(1)),
                                    digest=parse_digest(match.group(2))))
    return entries


def _looks_like_digest(item: str) -> bool:
    return item.lower().startswith(DIGEST_PREFIX) or f":{DIGEST_PREFIX}" in item.lower()


def plain_keys(value: str) -> list[str]:
    """Return the keys AGENTQ_API_KEYS holds in clear (what `agentq submit` may send)."""
    return [item for item in (p.strip() for p in value.split(","))
            if item and not _looks_like_digest(item)]


def read_keys_file(path: Path) -> dict[str, list[str]]:
    """Return the `[api_keys]` table of a keys file (AGENTQ_API_KEYS_FILE)."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise KeysError(f"cannot read the keys file {path}: {exc}") from None
    table = raw.get("api_keys", {})
    if not isinstance(table, dict):
        raise KeysError(f"{path}: api_keys must be a table of tenant = [digests]")
    return table


def key_table(env_value: str, *tables: Mapping[str, Iterable[str]]) -> KeyTable:
    """Combine AGENTQ_API_KEYS with `[api_keys]` tables (tier table, keys file)."""
    entries = entries_from_env(env_value)
    for table in tables:
        entries += entries_from_table(table)
    return KeyTable(entries=tuple(entries))


def new_key() -> str:
    """Return a fresh random key: 256 bits, URL-safe."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def config_lines(tenant: str, key: str) -> tuple[str, str]:
    """Return how to configure a key: the `[api_keys]` TOML line, the AGENTQ_API_KEYS entry."""
    digest = DIGEST_PREFIX + digest_of(key).hex()
    name = tenant if _TOML_BARE_KEY.match(tenant) else f'"{tenant}"'
    return f'{name} = ["{digest}"]', f"{tenant}:{digest}"
