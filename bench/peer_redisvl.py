"""RedisVL's SemanticCache as a library peer, on Redis 8 with RediSearch (bench/redis_search.py).

RedisVL stores each prompt, its answer and its vector as a Redis hash indexed by RediSearch (a FLAT
vector index: SemanticCache's schema does not ask for HNSW), and `check` is one vector range query.
The app calls `check(prompt)`, and on a miss `store(prompt, answer)`, as RedisVL's docs show: each
embeds the prompt.
Its threshold is a cosine *distance*: `distance_threshold` d keeps a neighbour with cosine >= 1 - d.
Its documented default is d = 0.1 (cosine 0.9).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import numpy as np

DEFAULT_COSINE = 1 - 0.1  # SemanticCache(distance_threshold=0.1), RedisVL's default


def vectorizer(embed: Callable[[str], np.ndarray]):  # noqa: ANN201 - redisvl is an optional import
    """A RedisVL vectorizer over `embed` (MiniLM through catcache's embedder, or a look-up of vectors)."""
    from redisvl.utils.vectorize import CustomVectorizer

    return CustomVectorizer(embed=lambda text: embed(text).tolist(),
                            embed_many=lambda texts: [embed(t).tolist() for t in texts])


class RedisVLPeer:
    """A fresh SemanticCache (its own index name) on the Redis at `url`, keeping cosine >= `cosine`."""

    name = "RedisVL"

    def __init__(self, cosine: float, embed: Callable[[str], np.ndarray], url: str):
        from redisvl.extensions.cache.llm import SemanticCache

        self.cache = SemanticCache(name=f"bench-{uuid.uuid4().hex[:8]}", distance_threshold=1 - cosine,
                                   vectorizer=vectorizer(embed), redis_url=url)
        self.last_id: str | None = None

    def lookup(self, text: str) -> str | None:
        hits = self.cache.check(prompt=text)
        self.last_id = hits[0]["entry_id"] if hits else None
        return hits[0]["response"] if hits else None

    def store(self, text: str, answer: str) -> None:
        self.cache.store(text, answer)

    def close(self) -> None:
        self.cache.delete()
