"""Several replicas of one backend: prefix-affinity routing with bounded load, health and fail-over.

vLLM keeps the KV blocks of prompts it has seen (automatic prefix caching). Requests of one tenant
and category share a long prefix (system prompt, then the IC examples in a stable order), so
sending them to the replica that already holds it saves that prefill, where a Kubernetes Service
spreading them at random recomputes it on every replica.

The ring is consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam, 2018): a
key goes to the first replica clockwise from its hash whose requests in flight stay within
`load_factor` times the mean, so a hot prefix spills onto the next replica instead of swamping
one, and adding or losing a replica moves only the keys it owned. The hash is stable across
processes, so several proxies send a prefix to the same replica.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
from dataclasses import dataclass
from typing import Literal

Routing = Literal["prefix", "round-robin"]
POINTS_PER_REPLICA = 64  # virtual nodes: enough for an even split of keys over a handful of replicas


@dataclass
class Replica:
    url: str  # base URL, ending in /v1
    in_flight: int = 0
    healthy: bool = True


def _point(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class ReplicaSet:
    def __init__(self, urls: list[str], routing: Routing = "prefix", load_factor: float = 1.25):
        self.replicas = [Replica(url.rstrip("/")) for url in urls]
        self.routing = routing
        self.load_factor = load_factor
        ring = sorted((_point(f"{replica.url}#{i}"), index)
                      for index, replica in enumerate(self.replicas) for i in range(POINTS_PER_REPLICA))
        self._points = [point for point, _ in ring]
        self._owners = [index for _, index in ring]
        self._turn = itertools.count()

    def __len__(self) -> int:
        return len(self.replicas)

    def order(self, key: str | None) -> list[Replica]:
        """The replicas to try, best first: the chosen one, the other healthy ones, then the
        unhealthy ones (a probe may be behind: better to try them than to fail the request)."""
        if len(self.replicas) == 1:
            return list(self.replicas)
        if self.routing == "prefix" and key is not None:
            walk = self._walk(key)
        else:
            start = next(self._turn) % len(self.replicas)
            walk = self.replicas[start:] + self.replicas[:start]
        healthy = [replica for replica in walk if replica.healthy]
        if self.routing == "prefix" and healthy:
            capacity = self._capacity(len(healthy))
            chosen = next((replica for replica in healthy if replica.in_flight < capacity), healthy[0])
            healthy.remove(chosen)
            healthy.insert(0, chosen)
        return healthy + [replica for replica in walk if not replica.healthy]

    def _walk(self, key: str) -> list[Replica]:
        """Every replica once, in ring order clockwise from the key's point."""
        start = bisect.bisect(self._points, _point(key))
        seen: dict[int, None] = {}
        for offset in range(len(self._owners)):
            seen.setdefault(self._owners[(start + offset) % len(self._owners)])
            if len(seen) == len(self.replicas):
                break
        return [self.replicas[index] for index in seen]

    def _capacity(self, healthy: int) -> int:
        """Requests in flight a replica may hold before the next one clockwise takes the key."""
        total = sum(replica.in_flight for replica in self.replicas if replica.healthy) + 1
        return math.ceil(self.load_factor * total / healthy)


def affinity_key(tenant: str | None, category: str | None, body: dict) -> str:
    """What decides the prompt prefix a backend can reuse: tenant (each has its own `cache_salt`),
    category (its IC examples), and the system prompt (chat) or the start of the prompt (completions)."""
    messages = body.get("messages")
    if isinstance(messages, list):
        leading = itertools.takewhile(lambda m: isinstance(m, dict) and m.get("role") in ("system", "developer"),
                                      messages)
        prefix = repr([m.get("content") for m in leading])
    else:
        prompt = body.get("prompt")
        prefix = prompt[:512] if isinstance(prompt, str) else ""
    return f"{tenant or ''}\x1f{category or ''}\x1f{prefix}"
