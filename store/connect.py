"""One Redis client from a URL: a single server, or a Redis Cluster.

`redis://host:port/db` (or `rediss://`, `unix://`) is one server.
`redis+cluster://host:port[,host:port...]` (or `rediss+cluster://`) is a Redis Cluster, reached
through the first of the listed nodes that answers; redis-py's RedisCluster learns the rest of
the topology from it, follows MOVED/ASK redirections and refreshes the slot map when a master
fails over. List more than one node so a proxy can start while one of them is down. Both
clients take the same commands, so the store and the reports do not care which one they got.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0] in CLUSTER_SCHEMES


def connect(url: str, **options: Any) -> Redis | RedisCluster:
    """The asyncio client for `url`; `options` (timeouts) go to the client as they are."""
    if is_cluster_url(url):
        first, others = cluster_seeds(url)
        return RedisCluster.from_url(first, startup_nodes=[ClusterNode(host, port) for host, port in others],
                                     **options)
    return Redis.from_url(url, **options)


def cluster_seeds(url: str) -> tuple[str, list[tuple[str, int]]]:
    """A cluster URL as redis-py takes it: the first node as a plain URL (with any credentials
    and options), and the host and port of each further node."""
    scheme, _, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    credentials, at, hosts = netloc.rpartition("@")
    first, *others = hosts.split(",")
    seeds = [(host, int(port)) for host, _, port in (node.rpartition(":") for node in others)]
    return f"{CLUSTER_SCHEMES[scheme]}://{credentials}{at}{first}{slash}{tail}", seeds
