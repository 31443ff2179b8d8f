"""API keys and tenancy: the caller's key, never the request body, decides the tenant.

Keys come from `Settings.api_keys` ("key:tenant,key2:tenant2"). With none configured the API is
open and every request belongs to `Settings.default_tenant`. Only a digest of the key leaves this
module (as the rate-limit identity), so the secret never reaches Redis or a log line.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Caller:
    tenant: str
    identity: str  # rate-limit bucket: a key digest, or "ip:<addr>" on an open API


class InvalidKeyConfigError(ValueError):
    pass


def parse_api_keys(raw: str) -> dict[str, str]:
    """Parse "key:tenant,..." into {key: tenant}; a malformed entry fails at startup, not per request."""
    keys: dict[str, str] = {}
    for entry in raw.split(","):
        entry = entry.strip()
        if not entry:
            continue
        key, sep, tenant = entry.rpartition(":")
        key, tenant = key.strip(), tenant.strip()
        if not sep or not key or not tenant:
            raise InvalidKeyConfigError("RAGFLEET_API_KEYS entries must look like key:tenant")
        keys[key] = tenant
    return keys


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class KeyRing:
    """Looks a presented key up in constant time per configured key (no early exit on a prefix match)."""

    def __init__(self, keys: dict[str, str]) -> None:
        self._keys = [(k.encode("utf-8"), t) for k, t in keys.items()]

    def __bool__(self) -> bool:
        return bool(self._keys)

    def tenant_for(self, presented: str) -> str | None:
        raw = presented.encode("utf-8", "surrogatepass")
        found: str | None = None
        for key, tenant in self._keys:
            if hmac.compare_digest(raw, key):
                found = tenant
        return found
