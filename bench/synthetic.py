"""Synthetic cache entries for the scale and lookup-cost benchmarks: random unit vectors, the
index built from them, and the Redis documents a rebuild or a hit would read."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
from redis.asyncio import Redis

from catcache.index.hnsw import CategoryIndex, Entry
from catcache.store.documents import Document, category_key, doc_key

DIM = 384
SCOPE = "bench-scope"
RESPONSE = {"id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "test-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "A cached answer of a few words."},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20}}


def unit_vectors(n: int, dim: int = DIM, seed: int = 0, chunk: int = 10_000) -> Iterator[np.ndarray]:
    """`n` random unit vectors, `chunk` at a time, so a million never sit in memory at once."""
    rng = np.random.default_rng(seed)
    for start in range(0, n, chunk):
        block = rng.standard_normal((min(chunk, n - start), dim), dtype=np.float32)
        yield block / np.linalg.norm(block, axis=1, keepdims=True)


def doc_id(i: int) -> str:
    return f"bench{i:08d}"


def build_index(n: int, dim: int = DIM) -> tuple[CategoryIndex, float]:
    """The index of `n` entries, added in batches as a rebuild adds them; (index, seconds)."""
    index = CategoryIndex(dim)
    started = time.perf_counter()
    i = 0
    for block in unit_vectors(n, dim):
        index.add_many([Entry(doc_id(i + k), SCOPE) for k in range(len(block))], block)
        i += len(block)
    return index, time.perf_counter() - started


async def fill_redis(redis: Redis, n: int, category: str, dim: int = DIM, batch: int = 2_000) -> None:
    """Write `n` documents as DocumentStore.put lays them out, pipelined (no events, no quota)."""
    i = 0
    for block in unit_vectors(n, dim):
        for start in range(0, len(block), batch):
            async with redis.pipeline(transaction=False) as pipe:
                for vector in block[start:start + batch]:
                    doc = Document(doc_id(i), "chat", "test-model", category, SCOPE, f"synthetic query {i}",
                                   RESPONSE, embedding=vector)
                    pipe.hset(doc_key(doc.doc_id), mapping=doc.to_redis())
                    pipe.zadd(category_key(category), {doc.doc_id: 1.0})
                    i += 1
                await pipe.execute()
