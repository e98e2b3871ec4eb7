"""`catcache purge` reaches the Redis the proxies use, one server or a Redis Cluster alike."""

from __future__ import annotations

import subprocess
import sys

from redis.asyncio import Redis

from catcache.store.documents import Document, DocumentStore, category_key, doc_key
from catcache.testing.redis import run_with_store

ON_CLUSTER_TOO = True  # conftest: every Redis test here runs on one server and on a cluster


def test_the_purge_command_removes_a_category_at_a_server_or_a_cluster_url(redis_url: str) -> None:
    """A regression: the command once built a plain client, so a redis+cluster:// URL (the one
    `catcache deploy` renders) ended in a traceback."""
    names: list[str] = []

    async def stored(store: DocumentStore, redis: Redis, category: str) -> None:
        names.append(category)
        await store.put(Document(f"{category}-1", "chat", "m", category, "scope", "q", {"choices": []}),
                        ttl=60, eviction="lru", quota=10)

    run_with_store(redis_url, stored)
    done = subprocess.run([sys.executable, "-m", "catcache", "purge", "--redis", redis_url, "--category", names[0]],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "purged 1 entries"

    async def gone(store: DocumentStore, redis: Redis, _: str) -> None:
        assert await redis.exists(doc_key(f"{names[0]}-1")) == 0
        assert await redis.zcard(category_key(names[0])) == 0

    run_with_store(redis_url, gone)
