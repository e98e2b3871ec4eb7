"""How the semantic tier's costs grow with the index: search latency, memory, rebuild time.

    python -m bench.scale                        # 10k and 100k entries
    python -m bench.scale --sizes 1000000        # 1M: about 40 minutes and 6 GB here

Per size, with synthetic 384-dimensional unit vectors (the search cost of HNSW depends on the
size and dimension, not on where the vectors come from):
- search: CategoryIndex.search for k=32 (the proxy asks for 8 neighbours and looks 4x wider to
  filter scopes), p50/p99 over 1,000 random queries;
- memory: the process's RSS growth while building the index, per entry (hnswlib allocates by
  doubling, so this includes the slack a real index carries);
- rebuild: the documents written to a fresh embedded Redis, then SemanticIndex.rebuild() timed,
  as a proxy does at start without a snapshot;
- snapshot: that index saved (as at shutdown), then a restart's SemanticIndex.start() timed:
  the snapshot loaded and the stream's events after it replayed (1% of the entries written
  after the snapshot, as another proxy would have).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import tempfile
import time
from pathlib import Path

from redis.asyncio import Redis

from bench import output, synthetic
from catcache.index.semantic import SemanticIndex
from catcache.store.documents import Document, DocumentStore
from catcache.store.embedded import EmbeddedRedis

SEARCHES = 1_000
K = 32


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def search_ms(n: int) -> dict:
    gc.collect()
    before = rss()
    index, build_s = synthetic.build_index(n)
    grown = rss() - before
    queries = next(synthetic.unit_vectors(SEARCHES, seed=1))
    times = []
    for vector in queries:
        started = time.perf_counter()
        index.search(vector, K)
        times.append((time.perf_counter() - started) * 1000)
    return {"build_s": round(build_s, 1), "search_ms": output.percentiles(times, (50, 99)),
            "bytes_per_entry": round(grown / n)}


async def rebuild_s(n: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="catcache-scale-") as tmp, EmbeddedRedis(tmp) as server:
        redis = Redis.from_url(server.url)
        try:
            started = time.perf_counter()
            await synthetic.fill_redis(redis, n, "factual")
            filled = time.perf_counter() - started
            index = SemanticIndex(DocumentStore(redis, "bench"), synthetic.DIM)
            started = time.perf_counter()
            loaded = await index.rebuild()
            rebuilt_s = time.perf_counter() - started
            snapshots = Path(tmp) / "index"
            started = time.perf_counter()
            await index.save_snapshot(snapshots)
            saved_s = time.perf_counter() - started
            del index
            gc.collect()
            other = DocumentStore(redis, "another proxy")  # stores after the snapshot, with their events
            for i, vector in enumerate(next(synthetic.unit_vectors(max(1, n // 100), seed=2))):
                await other.put(Document(f"after-{i}", "chat", "test-model", "factual", synthetic.SCOPE, f"after {i}",
                                         synthetic.RESPONSE, embedding=vector), ttl=3600, eviction="lfu", quota=10 * n)
            restarted = SemanticIndex(DocumentStore(redis, "restarted"), synthetic.DIM)
            started = time.perf_counter()
            restored = await restarted.start(snapshots)
            return {"write_s": round(filled, 1), "rebuild_s": round(rebuilt_s, 1), "rebuilt": loaded,
                    "snapshot_save_s": round(saved_s, 1), "restart_s": round(time.perf_counter() - started, 1),
                    "restarted_with": restored,
                    "snapshot_bytes_per_entry": round(sum(f.stat().st_size for f in snapshots.iterdir()) / n)}
        finally:
            await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[10_000, 100_000])
    parser.add_argument("--name", default="scale")
    args = parser.parse_args()
    results = []
    for n in args.sizes:
        result = {"entries": n, **search_ms(n)}
        gc.collect()
        result.update(asyncio.run(rebuild_s(n)))
        results.append(result)
        print(result, flush=True)
    output.show("semantic index at scale (384 dims)", ["entries", "search p50 ms", "search p99 ms", "bytes/entry",
                                                       "build s", "rebuild from Redis s", "snapshot save s",
                                                       "restart from snapshot s"],
                [[r["entries"], r["search_ms"]["p50"], r["search_ms"]["p99"], r["bytes_per_entry"], r["build_s"],
                  r["rebuild_s"], r["snapshot_save_s"], r["restart_s"]] for r in results])
    output.save(args.name, {"k": K, "searches": SEARCHES, "dim": synthetic.DIM, "sizes": results})


if __name__ == "__main__":
    main()
