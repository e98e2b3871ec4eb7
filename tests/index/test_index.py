"""The semantic tier's graph and its rebuild from Redis, below the proxy."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
from redis.asyncio import Redis

from catcache.index.hnsw import CategoryIndex, Entry
from catcache.index.semantic import SemanticIndex
from catcache.store.documents import Document, DocumentStore, doc_key
from catcache.testing.redis import run_with_store

ON_CLUSTER_TOO = True  # conftest: every Redis test here runs on one server and on a cluster

DIM = 16


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


async def store_entries(store: DocumentStore, category: str, vectors: np.ndarray, scope: Callable[[int], str]) -> None:
    """Entry i of `category` as `<category>-<i>`, with its vector and scope(i), as a proxy stores it."""
    for i, vector in enumerate(vectors):
        doc = Document(f"{category}-{i}", "chat", "m", category, scope(i), f"q{i}", {"choices": []}, embedding=vector)
        await store.put(doc, ttl=60, eviction="lru", quota=1000)


def test_search_finds_each_entry_and_grows_past_its_capacity() -> None:
    vectors = unit(np.random.default_rng(0), 50)
    index = CategoryIndex(DIM, capacity=8)
    for i, vector in enumerate(vectors[:20]):
        index.add(Entry(f"d{i}", "s"), vector)
    index.add_many([Entry(f"d{i}", "s") for i in range(20, 50)], vectors[20:])
    assert len(index) == 50
    for i in (0, 19, 20, 49):
        best = index.search(vectors[i], 1)[0]
        assert best.entry.doc_id == f"d{i}" and best.similarity > 0.999


def test_removed_entries_are_not_found_and_their_slots_are_reused() -> None:
    vectors = unit(np.random.default_rng(1), 12)
    index = CategoryIndex(DIM, capacity=8)
    index.add_many([Entry(f"d{i}", "s") for i in range(8)], vectors[:8])
    index.remove("d3")
    index.remove("d5")
    assert "d3" not in index and all(n.entry.doc_id != "d3" for n in index.search(vectors[3], 8))
    index.add_many([Entry(f"d{i}", "s") for i in range(8, 12)], vectors[8:])  # 2 reuse slots, 2 grow
    assert len(index) == 10
    assert index.search(vectors[11], 1)[0].entry.doc_id == "d11"


def test_a_repeated_id_keeps_its_last_vector() -> None:
    vectors = unit(np.random.default_rng(2), 3)
    index = CategoryIndex(DIM)
    index.add(Entry("same", "old"), vectors[0])
    index.add_many([Entry("same", "a"), Entry("other", "s"), Entry("same", "b")], vectors)
    assert len(index) == 2
    best = index.search(vectors[2], 1)[0]
    assert best.entry == Entry("same", "b") and best.similarity > 0.999
    assert all(n.similarity < 0.999 for n in index.search(vectors[0], 2))  # the old vector is gone


def test_other_scopes_do_not_crowd_out_this_one() -> None:
    """200 tenants cached the question (cosine ~0.96); this tenant's own entry (~0.89) is found."""
    rng = np.random.default_rng(4)
    question = unit(rng, 1)[0]

    def near(scale: float, n: int) -> np.ndarray:
        moved = question + scale * unit(rng, n)
        return moved / np.linalg.norm(moved, axis=1, keepdims=True)

    index = SemanticIndex(store=None, dim=DIM)  # search never touches the store
    index._index("c").add_many([Entry(f"t{i}", f"tenant{i}") for i in range(200)], near(0.3, 200))
    index.add("c", "mine", "me", near(0.5, 1)[0])
    found = index.search("c", question, "me", 8, floor=0.85)
    assert [n.entry.doc_id for n in found] == ["mine"] and 0.85 < found[0].similarity < 0.93
    assert index.search("c", question, "me", 8, floor=0.97) == [], "no wider search once below the floor"


def test_rebuild_loads_every_live_entry_across_batches(redis_url: str) -> None:
    async def scenario(store: DocumentStore, redis: Redis, category: str) -> None:
        vectors = unit(np.random.default_rng(3), 25)
        await store_entries(store, category, vectors, lambda i: f"scope{i % 2}")
        await store.delete([f"{category}-0"], category)
        index = SemanticIndex(store, DIM)
        await index.rebuild(batch=7)
        assert index.sizes()[category] == 24
        found = index.search(category, vectors[9], "scope1", 1, floor=0.9)
        assert found[0].entry.doc_id == f"{category}-9"
        assert index.search(category, vectors[0], "scope0", 1, floor=0.9)[0].entry.doc_id != f"{category}-0"

    run_with_store(redis_url, scenario)


def test_sweep_drops_entries_redis_has_expired(redis_url: str) -> None:
    async def scenario(store: DocumentStore, redis: Redis, category: str) -> None:
        vectors = unit(np.random.default_rng(5), 3)
        index = SemanticIndex(store, DIM)
        await store_entries(store, category, vectors, lambda i: "s")
        for i, vector in enumerate(vectors):
            index.add(category, f"{category}-{i}", "s", vector)
        await redis.pexpire(doc_key(f"{category}-1"), 1)
        await asyncio.sleep(0.05)
        assert await index.sweep() >= 1
        assert index.sizes()[category] == 2
        assert await store.category_size(category) == 2
        assert all(n.entry.doc_id != f"{category}-1" for n in index.search(category, vectors[1], "s", 3, 0.0))

    run_with_store(redis_url, scenario)
