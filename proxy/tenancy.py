"""Whose cache a request reads and writes, and what its Cache-Control asks of the cache.

A tenant is a hash of the caller's API key (or of a header the policy names), never the key
itself; a category that is not `shared` keeps each tenant's entries apart by scoping their keys.
"""

from __future__ import annotations

import hashlib

from fastapi import Request

from catcache.policy.schema import Policy


def tenant_of(request: Request, policy: Policy) -> str | None:
    """A hash that stands for the caller (never the key itself), or None for one shared cache."""
    if policy.tenancy.by == "none":
        return None
    if policy.tenancy.by == "header":
        value = request.headers.get(policy.tenancy.header)
    else:
        value = request.headers.get("authorization", "").removeprefix("Bearer ").strip() or None
    return hashlib.sha256(value.encode()).hexdigest()[:32] if value else None


def scoped(key: str, tenant: str | None) -> str:
    """`key` as the tenant's own (None: the key shared by everyone)."""
    return hashlib.sha256(f"{tenant}\0{key}".encode()).hexdigest() if tenant else key


def cache_control(header: str) -> str | None:
    """"no-store" (the cache is left out), "no-cache" (not read, still written) or None."""
    directives = {part.strip().lower() for part in header.split(",")}
    if "no-store" in directives:
        return "no-store"
    return "no-cache" if "no-cache" in directives else None
