"""The semantic tier's memory: one HNSW index per category, kept in step with Redis.

Redis is the source of truth. At start the indexes come from a snapshot on disk plus the events
of the Redis stream after it, or, when there is no usable snapshot, are rebuilt from the
documents' stored embeddings; afterwards this proxy's own additions go straight in, other
proxies' arrive through the Redis event stream, and entries that Redis has expired are dropped
lazily (a lookup finds the document gone) and by a periodic sweep.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import numpy as np
from rich.progress import Progress

from catcache.index import snapshot
from catcache.index.hnsw import CategoryIndex, Entry, Neighbour
from catcache.store.documents import EVENTS_MAXLEN, DocumentStore

log = logging.getLogger("catcache.index")
PROGRESS_ABOVE = 10_000
# A snapshot claims the stream position followed this long before it: a store of our own whose
# event is older may still be between Redis's reply and index.add, and replaying it is harmless.
SETTLE_S = 5.0


class SemanticIndex:
    def __init__(self, store: DocumentStore, dim: int, model: str = ""):
        self.store = store
        self.dim = dim
        self.model = model  # snapshots of another embedding model are not loaded
        self._indexes: dict[str, CategoryIndex] = {}
        self.position = "0-0"  # the last event of the Redis stream that the indexes reflect
        self._settled = self._recent = ("0-0", 0.0)  # (position, when followed), SETTLE_S apart
        self._changes = 0  # since the last snapshot
        self._deferred: list[tuple[str, list[Entry], np.ndarray | None]] | None = None  # while saving

    def sizes(self) -> dict[str, int]:
        return {name: len(index) for name, index in sorted(self._indexes.items())}

    def _index(self, category: str) -> CategoryIndex:
        if category not in self._indexes:
            self._indexes[category] = CategoryIndex(self.dim)
        return self._indexes[category]

    def add(self, category: str, doc_id: str, scope_key: str, vector: np.ndarray) -> None:
        self._changes += 1
        if self._deferred is not None:
            self._deferred.append((category, [Entry.of(doc_id, scope_key)], vector))
            return
        self._index(category).add(Entry.of(doc_id, scope_key), vector)

    def remove(self, category: str, doc_ids: list[str]) -> None:
        self._changes += len(doc_ids)
        if self._deferred is not None:
            self._deferred.append((category, [Entry(doc_id, "") for doc_id in doc_ids], None))
            return
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

    async def start(self, snapshots: Path | None) -> int:
        """Load the snapshot and replay the events after it; rebuild from Redis when it is missing,
        unreadable, of another model, or older than what the stream still holds. Returns the entries."""
        found = await self._usable_snapshot(snapshots) if snapshots is not None else None
        if found is None:
            return await self.rebuild()
        self._indexes = found.indexes
        self._follow_from(found.position)
        replayed = 0
        while True:
            position = self.position
            await self.follow(position, block_ms=None)
            if self.position == position:
                break
            replayed += 1
        total = sum(self.sizes().values())
        log.info("loaded semantic indexes from the snapshot of %s: %d entries, then %d batches of events",
                 time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(found.created)), total, replayed)
        return total

    async def _usable_snapshot(self, directory: Path) -> snapshot.Snapshot | None:
        try:
            found = await asyncio.to_thread(snapshot.load, directory, self.model, self.dim)
        except Exception as exc:  # noqa: BLE001 - any damage means a rebuild, never a failed start
            log.warning("snapshot in %s is unreadable (%s); rebuilding from redis", directory, exc)
            return None
        if found is None:
            log.info("no snapshot for model %s in %s; rebuilding from redis", self.model, directory)
            return None
        # Redis 6 streams do not say what they trimmed. The stream was trimmed since the save if its
        # oldest event moved, or, empty then, if it has reached its length limit since; events the
        # snapshot lacks may then be gone when the oldest event left is past the snapshot's.
        first, last = await self.store.first_event_id(), await self.store.last_event_id()
        moved = first != found.stream_first if found.stream_first != "0-0" \
            else await self.store.event_count() >= EVENTS_MAXLEN
        trimmed = moved and _after(first, found.position)
        if trimmed or _after(found.position, last):
            log.info("snapshot at event %s is stale (the stream holds %s..%s); rebuilding from redis",
                     found.position, first, last)
            return None
        return found

    async def save_snapshot(self, directory: Path) -> bool:
        """Write the indexes to `directory` if they changed since the last snapshot; True if written.
        Additions and removals wait in a list while the files are written (searches go on)."""
        if self._changes == 0 or self._deferred is not None:
            return False
        position, _ = self._settled
        try:
            first = await self.store.first_event_id()
        except Exception as exc:  # noqa: BLE001 - Redis is down: the next period tries again
            log.warning("no index snapshot now: %s", exc)
            return False
        self._deferred, self._changes = [], 0
        started = time.perf_counter()
        try:
            await asyncio.to_thread(snapshot.save, directory, dict(self._indexes), position, first, self.model,
                                    self.dim)
        except Exception:  # noqa: BLE001 - a failed snapshot costs a rebuild at the next start, no more
            log.exception("could not write the index snapshot to %s", directory)
            self._changes += 1
            return False
        finally:
            deferred, self._deferred = self._deferred, None
            for category, entries, vector in deferred:
                if vector is None:
                    self.remove(category, [entry.doc_id for entry in entries])
                else:
                    self.add(category, entries[0].doc_id, entries[0].scope_key, vector)
        log.info("snapshot of %d entries at event %s written in %.1f s", sum(self.sizes().values()), position,
                 time.perf_counter() - started)
        return True

    def categories(self) -> list[str]:
        """The categories that hold at least one entry."""
        return [name for name, index in self._indexes.items() if len(index)]

    async def rebuild(self, batch: int = 2000) -> int:
        """Load every live entry from Redis, `batch` at a time into each graph; returns how many.
        Events after the stream position taken first are replayed by `follow` (adding is idempotent)."""
        self._follow_from(await self.store.last_event_id())
        self._changes += 1  # a rebuilt index is worth a snapshot
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
                    entries.append(Entry.of(doc_id, scope))
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

    async def follow(self, after: str, block_ms: int | None = 250) -> str:
        """Apply other proxies' additions and evictions after event `after`; returns the last id seen."""
        read = await self.store.read_events(after, block_ms=block_ms)
        events = [event for _, event in read if event["origin"] != self.store.origin]
        added = [event["id"] for event in events if event["op"] == "add"]
        docs = {doc.doc_id: doc for doc in await self.store.get_many(added) if doc is not None} if added else {}
        for event in events:
            if event["op"] == "del":
                self.remove(event["category"], [event["id"]])
            elif (doc := docs.get(event["id"])) is not None and doc.embedding is not None:
                self.add(doc.category, doc.doc_id, doc.scope_key, doc.embedding)
        self._followed(read[-1][0] if read else after)
        return self.position

    def _follow_from(self, position: str) -> None:
        self.position = position
        self._settled = self._recent = (position, time.monotonic())

    def _followed(self, position: str) -> None:
        """Move to `position`; every SETTLE_S the position of SETTLE_S ago becomes the settled one."""
        self.position, now = position, time.monotonic()
        if now - self._recent[1] >= SETTLE_S:
            self._settled, self._recent = self._recent, (position, now)


def _after(a: str, b: str) -> bool:
    """Whether stream id `a` ("<ms>-<seq>") comes after `b`."""
    return tuple(map(int, a.split("-"))) > tuple(map(int, b.split("-")))
