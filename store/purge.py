"""Remove cached entries by category, tenant, age or key: from Redis, and from every proxy's index.

Deletions go through `DocumentStore.delete`, which writes a `del` event per entry on the stream
that every running proxy follows (`SemanticIndex.follow`), so a purge run from the CLI, or through
one proxy's admin route, empties the semantic tier of all of them, not only the exact tier.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from dataclasses import dataclass

from redis.exceptions import RedisError

from catcache.store.connect import connect
from catcache.store.documents import DocumentStore, category_key, doc_key

BATCH = 500


@dataclass(frozen=True)
class Purge:
    """Which entries to remove; the conditions given must all hold. `everything` must be said out loud."""

    category: str | None = None
    tenant: str | None = None          # the tenant hash, as in the access log and x-catcache-key scope
    older_than_s: float | None = None
    key: str | None = None             # an entry's id, as in the x-catcache-key response header
    everything: bool = False

    def __post_init__(self) -> None:
        given = [self.category, self.tenant, self.older_than_s, self.key]
        if self.everything == any(value is not None for value in given):
            raise ValueError("say what to purge: a category, a tenant, an age or a key, or everything (alone)")
        if self.older_than_s is not None and self.older_than_s < 0:
            raise ValueError("the age must not be negative")

    def matches(self, category: str, tenant: str, created: float, now: float) -> bool:
        return ((self.category is None or category == self.category)
                and (self.tenant is None or tenant == self.tenant)
                and (self.older_than_s is None or created <= now - self.older_than_s))


async def purge(store: DocumentStore, what: Purge) -> dict[str, list[str]]:
    """Delete the matching entries; returns the ids removed, per category."""
    now = time.time()
    categories = [what.category] if what.category is not None else await store.categories()
    removed: dict[str, list[str]] = {}
    for category in categories:
        if what.key is not None:
            candidates = [what.key]
        else:
            candidates = [m.decode() async for m, _ in store.redis.zscan_iter(category_key(category), count=BATCH)]
        for start in range(0, len(candidates), BATCH):
            chunk = candidates[start:start + BATCH]
            async with store.redis.pipeline(transaction=False) as pipe:
                for doc_id in chunk:
                    pipe.hmget(doc_key(doc_id), "category", "tenant", "created")
                rows = await pipe.execute()
            doomed = [doc_id for doc_id, (found, tenant, created) in zip(chunk, rows)
                      if found is not None and found.decode() == category
                      and what.matches(category, (tenant or b"").decode(), float(created or 0), now)]
            if doomed:
                await store.delete(doomed, category)
                removed.setdefault(category, []).extend(doomed)
    return removed


def from_fields(fields: object) -> Purge:
    """A Purge from the admin route's JSON or the CLI's flags; ValueError says what is wrong."""
    from catcache.policy.schema import parse_duration

    if not isinstance(fields, dict):
        raise ValueError("the body must be a JSON object")
    unknown = set(fields) - {"category", "tenant", "older_than", "key", "all"}
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(sorted(map(str, unknown)))}")
    for name in ("category", "tenant", "key"):
        if fields.get(name) is not None and (not isinstance(fields[name], str) or not fields[name]):
            raise ValueError(f"'{name}' must be a non-empty string")
    if not isinstance(fields.get("all", False), bool):
        raise ValueError("'all' must be true or false")
    age = fields.get("older_than")
    if age is not None:
        age = parse_duration(age)
        if isinstance(age, bool) or not isinstance(age, int | float):
            raise ValueError("'older_than' must be a duration such as 90m or 2d, or seconds")
    return Purge(category=fields.get("category"), tenant=fields.get("tenant"),
                 older_than_s=None if age is None else float(age), key=fields.get("key"),
                 everything=fields.get("all", False))


def run(fields: dict, redis_url: str | None = None, data_dir: str | None = None) -> int:
    """`catcache purge`: `fields` as the admin route takes them, at `redis_url` or the data dir's Redis."""
    from catcache.store.embedded import data_dir_redis

    try:
        what = from_fields(fields)
    except ValueError as exc:
        print(f"catcache purge: {exc}", file=sys.stderr)
        return 2
    try:
        with data_dir_redis(redis_url, data_dir) as url:
            removed = asyncio.run(_purge_at(url, what))
    except (RuntimeError, RedisError, OSError) as exc:
        print(f"catcache purge: {exc}", file=sys.stderr)
        return 1
    for category, ids in sorted(removed.items()):
        print(f"{category}: {len(ids)}")
    print(f"purged {sum(map(len, removed.values()))} entries")
    return 0


async def _purge_at(url: str, what: Purge) -> dict[str, list[str]]:
    redis = connect(url, socket_timeout=30.0, socket_connect_timeout=5.0)
    try:
        return await purge(DocumentStore(redis, origin=f"purge-{uuid.uuid4().hex}"), what)
    finally:
        await redis.aclose()
