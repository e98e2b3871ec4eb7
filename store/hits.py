"""Hit counting off the request path.

Counting a hit (the entry's use count and its LRU/LFU score) took two Redis round trips before
each hit was answered. Now a hit is queued here and answered at once; one background task writes
the queued hits in two round trips for all of them, and while it does, new hits queue up for the
next write. A hit whose count cannot be written (Redis down) is lost, as it was before.
"""

from __future__ import annotations

import asyncio
import contextlib

from catcache.store.documents import Document, DocumentStore
from catcache.store.health import CacheUnavailable, RedisGuard

MAX_BATCH = 512


class HitCounter:
    def __init__(self, store: DocumentStore, guard: RedisGuard):
        self._store = store
        self._guard = guard
        self._pending: list[tuple[Document, str]] = []
        self._task: asyncio.Task | None = None

    def add(self, doc: Document, eviction: str) -> None:
        """Queue one hit on `doc`, counted under its category's `eviction` (lru or lfu)."""
        self._pending.append((doc, eviction))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            with contextlib.suppress(CacheUnavailable):
                await self._guard.run(self._store.touch_many(batch))

    async def close(self) -> None:
        """Write what is queued (at shutdown)."""
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, CacheUnavailable):
                await self._task
        await self._drain()
