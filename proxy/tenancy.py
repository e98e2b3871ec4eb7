"""Whose cache a request reads and writes, and what its Cache-Control asks of the cache.

A tenant is a hash of the caller's credentials (or of a header the policy names), never the key
itself; a category that is not `shared` keeps each tenant's entries apart by scoping their keys.

Clients send their key in different headers: OpenAI's SDK as `Authorization: Bearer`, Azure
OpenAI's as `api-key`, others as `x-api-key`; the policy may name more (`tenancy.credentials`).
Every one of them is read, so two keys never share a scope whichever header carries them, and
one key is one tenant whichever header carries it. A caller with none is ANONYMOUS: a scope of
its own, apart from every keyed tenant and from the unscoped keys of shared categories.
"""

from __future__ import annotations

import hashlib

from fastapi import Request

from catcache.policy.schema import Policy

CREDENTIAL_HEADERS = ("authorization", "api-key", "x-api-key")
ANONYMOUS = "anonymous"  # never a hash (those are 32 hex digits), so no key's tenant can be it


def tenant_of(request: Request, policy: Policy) -> str | None:
    """A hash that stands for the caller, ANONYMOUS for a caller without one, or None where the
    policy keeps one cache for everyone (`tenancy.by: none`)."""
    if policy.tenancy.by == "none":
        return None
    if policy.tenancy.by == "header":
        values = request.headers.getlist(policy.tenancy.header)
    else:
        names = CREDENTIAL_HEADERS + tuple(h.lower() for h in policy.tenancy.credentials)
        values = [_credential(name, value) for name in names for value in request.headers.getlist(name)]
    values = sorted({value for value in values if value})
    if not values:
        return ANONYMOUS
    return hashlib.sha256("\0".join(values).encode()).hexdigest()[:32]


def _credential(header: str, value: str) -> str:
    """The key in a credential header: `Authorization: Bearer K` is K, as `api-key: K` is."""
    if header == "authorization":
        scheme, _, rest = value.strip().partition(" ")
        return rest.strip() if scheme.lower() == "bearer" else value.strip()
    return value.strip()


def scoped(key: str, tenant: str | None) -> str:
    """`key` as the tenant's own (None: the key shared by everyone)."""
    return hashlib.sha256(f"{tenant}\0{key}".encode()).hexdigest() if tenant else key


def cache_control(header: str, pragma: str = "") -> str | None:
    """"no-store" (the cache is left out), "no-cache" (not read, still written) or None.

    Directives are split on commas and semicolons (`no-store;` is seen as often as `no-store`),
    and HTTP/1.0's `Pragma: no-cache` counts as `no-cache`."""
    directives = {part.strip().lower() for part in header.replace(";", ",").split(",")}
    if "no-store" in directives:
        return "no-store"
    if "no-cache" in directives or "no-cache" in {part.strip().lower() for part in pragma.split(",")}:
        return "no-cache"
    return None
