"""The semantic tier's memory: one HNSW index per category, kept in step with Redis.

Redis is the source of truth. At start each index is rebuilt from the documents' stored
embeddings; afterwards this proxy's own additions go straight in, other proxies' arrive through
the Redis event stream, and entries that Redis has expired are dropped lazily (a lookup finds the
document gone) and by a periodic sweep.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np
from rich.progress import Progress

from catcache.index.hnsw import CategoryIndex, Entry, Neighbour
from catcache.store.documents import DocumentStore

log = logging.getLogger("catcache.index")
PROGRESS_ABOVE = 10_000


class SemanticIndex:
    def __init__(self, store: DocumentStore, dim: int):
        self.store = store
        self.dim = dim
        self._indexes: dict[str, CategoryIndex] = {}

    def sizes(self) -> dict[str, int]:
        return {name: len(index) for name, index in sorted(self._indexes.items())}

    def _index(self, category: str) -> CategoryIndex:
        if category not in self._indexes:
            self._indexes[category] = CategoryIndex(self.dim)
        return self._indexes[category]

    def add(self, category: str, doc_id: str, scope_key: str, vector: np.ndarray) -> None:
        self._index(category).add(Entry(doc_id, scope_key), vector)

    def remove(self, category: str, doc_ids: list[str]) -> None:
        index = self._indexes.get(category)
        for doc_id in doc_ids if index is not None else []:
            index.remove(doc_id)

    def search(self, category: str, vector: np.ndarray, scope_key: str, k: int, floor: float) -> list[Neighbour]:
        """Up to k nearest entries of `category` whose scope equals `scope_key`, most similar first.

        Entries of other scopes (tenants, conversations) share the graph, so a popular question
        asked by many tenants can crowd this scope's entry out of the nearest few. The search
        widens while the farthest neighbour it returned is still at `floor` or above (the lowest
        similarity that could be served or used), so it walks no further than the entries that matter.
        """
        index = self._indexes.get(category)
        if index is None:
            return []
        wanted = k * 4
        while True:
            found = index.search(vector, wanted)
            mine = [n for n in found if n.entry.scope_key == scope_key]
            if len(mine) >= k or len(found) < wanted or found[-1].similarity < floor:
                return mine[:k]
            wanted *= 4

    def categories(self) -> list[str]:
        """The categories that hold at least one entry."""
        return [name for name, index in self._indexes.items() if len(index)]

    async def rebuild(self, batch: int = 2000) -> int:
        """Load every live entry from Redis, `batch` at a time into each graph; returns how many."""
        categories = await self.store.categories()
        total = sum([await self.store.category_size(c) for c in categories])
        with Progress(disable=total < PROGRESS_ABOVE, transient=True) as progress:
            task = progress.add_task("rebuilding indexes from redis", total=total)
            loaded = 0
            for category in categories:
                entries: list[Entry] = []
                vectors: list[np.ndarray] = []
                async for doc_id, scope, vector in self.store.scan_category(category):
                    progress.advance(task)
                    if vector is None or vector.shape[0] != self.dim:
                        continue
                    entries.append(Entry(doc_id, scope))
                    vectors.append(vector)
                    if len(entries) >= batch:
                        await self._load(category, entries, vectors)
                        loaded += len(entries)
                        entries, vectors = [], []
                if entries:
                    await self._load(category, entries, vectors)
                    loaded += len(entries)
        log.info("rebuilt semantic indexes: %d entries in %d categories", loaded, len(categories))
        return loaded

    async def _load(self, category: str, entries: list[Entry], vectors: list[np.ndarray]) -> None:
        # In a worker thread: hnswlib releases the GIL, so the event loop keeps answering meanwhile.
        await asyncio.to_thread(self._index(category).add_many, entries, np.stack(vectors))

    async def sweep(self, batch: int = 2000) -> int:
        """Drop entries whose documents Redis has expired or evicted; returns how many."""
        dropped = 0
        for category, index in list(self._indexes.items()):
            doc_ids = index.doc_ids()
            for start in range(0, len(doc_ids), batch):
                chunk = doc_ids[start:start + batch]
                dead = [doc_id for doc_id, alive in zip(chunk, await self.store.alive(chunk)) if not alive]
                self.remove(category, dead)
                await self.store.forget_members(category, dead)
                dropped += len(dead)
                await asyncio.sleep(0)
        return dropped

    async def follow(self, after: str) -> str:
        """Apply other proxies' additions and evictions after event `after`; returns the last id seen."""
        events = await self.store.read_events(after, block_ms=250)
        for event_id, event in events:
            after = event_id
            if event["origin"] == self.store.origin:
                continue
            if event["op"] == "del":
                self.remove(event["category"], [event["id"]])
                continue
            doc = await self.store.get(event["id"])
            if doc is not None and doc.embedding is not None:
                self.add(doc.category, doc.doc_id, doc.scope_key, doc.embedding)
        return after
