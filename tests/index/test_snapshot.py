"""Index snapshots: a restart loads them and replays only the Redis events after them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from redis.asyncio import Redis

from catcache.index import snapshot
from catcache.index.hnsw import CategoryIndex, Entry
from catcache.index.semantic import SemanticIndex
from catcache.store.documents import EVENTS, DocumentStore
from catcache.testing.redis import run_with_store

from .test_index import DIM, store_entries, unit


def test_a_saved_index_loads_with_its_entries_and_free_slots(tmp_path: Path) -> None:
    vectors = unit(np.random.default_rng(5), 30)
    index = CategoryIndex(DIM, capacity=8)
    index.add_many([Entry(f"d{i}", f"s{i % 3}") for i in range(30)], vectors)
    index.remove("d7")
    index.save(tmp_path / "g.hnsw", tmp_path / "g.entries")
    loaded = CategoryIndex.load(DIM, tmp_path / "g.hnsw", tmp_path / "g.entries")
    assert len(loaded) == 29 and "d7" not in loaded
    best = loaded.search(vectors[12], 1)[0]
    assert best.entry == Entry("d12", "s0") and best.similarity > 0.999
    loaded.add(Entry("new", "s"), vectors[7])  # reuses d7's slot
    assert len(loaded) == 30 and loaded.search(vectors[7], 1)[0].entry.doc_id == "new"


def fresh(store: DocumentStore, model: str = "m") -> SemanticIndex:
    """A restarted proxy's index: its own origin, so it replays every event after its snapshot."""
    return SemanticIndex(DocumentStore(store.redis, origin="restarted"), DIM, model=model)


def test_a_restart_loads_the_snapshot_and_replays_what_came_after(redis_url: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    vectors = unit(np.random.default_rng(6), 40)

    async def scenario(store: DocumentStore, redis: Redis, category: str) -> None:
        await store_entries(store, category, vectors[:30], lambda i: "s")
        running = SemanticIndex(store, DIM, model="m")
        assert await running.start(tmp_path) >= 30  # no snapshot yet: rebuilt from Redis
        assert await running.save_snapshot(tmp_path)
        assert not await running.save_snapshot(tmp_path), "nothing changed since"
        other = DocumentStore(redis, origin="another proxy")  # after the snapshot, elsewhere
        await store_entries(other, category, vectors[:40], lambda i: "s")  # 0-29 again, and 30-39
        await other.delete([f"{category}-3"], category)

        restarted = fresh(store)
        monkeypatch.setattr(restarted, "rebuild", pytest.fail)  # the snapshot must do
        await restarted.start(tmp_path)
        found = {i: restarted.search(category, vectors[i], "s", 1, 0.0) for i in range(40)}
        assert not found[3] or found[3][0].entry.doc_id != f"{category}-3"
        assert all(found[i][0].entry.doc_id == f"{category}-{i}" for i in range(40) if i != 3)
        assert restarted.sizes()[category] == 39

    run_with_store(redis_url, scenario)


@pytest.mark.parametrize("damage", ["missing", "unreadable", "other model", "stream trimmed"])
def test_a_missing_or_stale_snapshot_means_a_full_rebuild(redis_url: str, tmp_path: Path, damage: str) -> None:
    vectors = unit(np.random.default_rng(7), 10)

    async def scenario(store: DocumentStore, redis: Redis, category: str) -> None:
        await store_entries(store, category, vectors, lambda i: "s")
        running = SemanticIndex(store, DIM, model="m")
        await running.start(None)
        await running.save_snapshot(tmp_path)
        await store_entries(store, category, vectors[:1], lambda i: "s")  # an event after the snapshot
        if damage == "missing":
            (tmp_path / snapshot.MANIFEST).unlink()
        elif damage == "unreadable":
            for graph in tmp_path.glob("*.hnsw"):
                graph.write_bytes(b"not a graph")
        elif damage == "stream trimmed":
            await redis.xtrim(EVENTS, minid=await store.last_event_id(), approximate=False)  # the events after the snapshot
        restarted = fresh(store, model="other" if damage == "other model" else "m")
        rebuilt = []
        original = restarted.rebuild

        async def counting_rebuild() -> int:
            rebuilt.append(True)
            return await original()

        restarted.rebuild = counting_rebuild  # type: ignore[method-assign]
        await restarted.start(tmp_path)
        assert rebuilt and restarted.sizes()[category] == 10

    run_with_store(redis_url, scenario)


def test_a_snapshot_of_an_empty_stream_stays_usable_as_events_arrive(redis_url: str, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    vectors = unit(np.random.default_rng(8), 6)

    async def scenario(store: DocumentStore, redis: Redis, category: str) -> None:
        await store_entries(store, category, vectors[:5], lambda i: "s")
        await redis.delete(EVENTS)  # as after bulk loads that write no events, or a fresh Redis
        running = SemanticIndex(store, DIM, model="m")
        await running.start(None)
        await running.save_snapshot(tmp_path)
        other = DocumentStore(redis, origin="another proxy")
        await store_entries(other, category, vectors, lambda i: "s")  # the stream starts after the save
        restarted = fresh(store)
        monkeypatch.setattr(restarted, "rebuild", pytest.fail)
        await restarted.start(tmp_path)
        assert restarted.sizes()[category] == 6

    run_with_store(redis_url, scenario)
