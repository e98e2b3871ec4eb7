"""One Redis client from a URL: a single server, or a Redis Cluster.

`redis://host:port/db` (or `rediss://`, `unix://`) is one server. `redis+cluster://host:port`
(or `rediss+cluster://`) is a Redis Cluster reached through any one of its nodes; redis-py's
RedisCluster learns the rest of the topology from it, follows MOVED/ASK redirections and refreshes
the slot map when a master fails over. Both clients take the same commands, so the store and the
reports do not care which one they were given.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis, RedisCluster

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0] in CLUSTER_SCHEMES


def connect(url: str, **options: Any) -> Redis | RedisCluster:
    """The asyncio client for `url`; `options` (timeouts) go to the client as they are."""
    scheme, _, rest = url.partition("://")
    if scheme in CLUSTER_SCHEMES:
        return RedisCluster.from_url(f"{CLUSTER_SCHEMES[scheme]}://{rest}", **options)
    return Redis.from_url(url, **options)
