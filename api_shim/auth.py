"""API keys and tenancy: the caller's key, never the request body, decides the tenant.

Keys come from `Settings.api_keys` ("key:tenant,key2:tenant2"). With none configured the API is
open and every request belongs to `Settings.default_tenant`. `Settings.admin_keys` names the keys
with admin rights (the `/v1/admin/...` routes across tenants); an admin key not listed in
`api_keys` belongs to tenant `admin`. On an open API every caller is an admin: there is no key to
tell one from another. Only a digest of the key leaves this
module (as the rate-limit identity), so the secret never reaches Redis or a log line.

Rate limits count per key; where several keys map to one tenant (a key being rotated, several
services of one team) the tenant also has budgets its keys spend together (`Caller.tenant_bucket`).
"""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Caller:
    tenant: str
    identity: str  # rate-limit bucket: "key:<digest>", or "ip:<addr>" on an open API
    admin: bool = False  # sees and works every tenant's dead letters (api_shim.routes.admin)
    tenant_bucket: str | None = None  # "tenant:<name>" where several keys share the tenant (its budgets)


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


def parse_admin_keys(raw: str) -> frozenset[str]:
    return frozenset(k.strip() for k in raw.split(",") if k.strip())


def with_admin_keys(keys: dict[str, str], admins: frozenset[str]) -> dict[str, str]:
    """`keys` plus every admin key it lacks, as a key of tenant `admin`."""
    return {**{k: "admin" for k in sorted(admins)}, **keys}


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class KeyRing:
    """Looks a presented key up in constant time per configured key (no early exit on a prefix match)."""

    def __init__(self, keys: dict[str, str], admins: frozenset[str] = frozenset()) -> None:
        self._keys = [(k.encode("utf-8"), t) for k, t in keys.items()]
        self._admins = [k.encode("utf-8") for k in admins]
        per_tenant = Counter(keys.values())
        self.shared_tenants = frozenset(t for t, n in per_tenant.items() if n > 1)

    def __bool__(self) -> bool:
        return bool(self._keys)

    def tenant_for(self, presented: str) -> str | None:
        raw = presented.encode("utf-8", "surrogatepass")
        found: str | None = None
        for key, tenant in self._keys:
            if hmac.compare_digest(raw, key):
                found = tenant
        return found

    def caller(self, presented: str, tenant: str) -> Caller:
        """The caller behind a valid key of `tenant`: its own rate-limit bucket, and its tenant's where
        keys share one."""
        shared = f"tenant:{tenant}" if tenant in self.shared_tenants else None
        return Caller(tenant, f"key:{key_digest(presented)}", self.is_admin(presented), shared)

    def is_admin(self, presented: str) -> bool:
        raw = presented.encode("utf-8", "surrogatepass")
        found = False
        for key in self._admins:
            if hmac.compare_digest(raw, key):
                found = True
        return found
