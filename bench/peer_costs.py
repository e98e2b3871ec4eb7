"""The cost columns of the side by side: latency added to a miss, memory per entry, restart time.

- Miss overhead: fresh questions (random words of the workloads, so no two are alike) sent one
  at a time, in turn, to the test backend direct, LiteLLM with its cache off, LiteLLM with
  `redis-semantic`, and catcache; the figure is the median of the paired differences with the
  direct call made in the same round, so load on the shared machine hits every system alike.
- Memory: the same entries (bench/redis_memory.py's: a 1,200-character answer, the request, a
  384-dimension vector) written through each library's store call; Redis' used_memory growth,
  plus for catcache its in-process index and for GPTCache its process' RSS growth (the hnswlib
  index and SQLite's cache; the SQLite file on disk is reported apart).
- Restart with synthetic vectors (random unit vectors: load and indexing costs depend on the count
  and dimension, not on where the vectors come from): catcache's Redis from its append-only file
  and its index from the snapshot a shutdown saves, RedisVL's Redis from its dump until RediSearch
  has indexed every entry, GPTCache from its SQLite file and saved hnswlib index until a `get`
  answers. The three restart in turn, three rounds, after all were filled.
"""

from __future__ import annotations

import asyncio
import gc
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import redis
from redis.asyncio import Redis
from openai import OpenAI

from bench import output, redis_memory, scale, stack, synthetic
from bench.peer_gptcache import GPTCachePeer
from bench.peer_litellm import DOCS_EXAMPLE_SIMILARITY, MODEL
from bench.peer_litellm import proxy as litellm_proxy
from bench.peer_redisvl import RedisVLPeer
from bench.peer_replay import ask
from bench.redis_search import SearchRedis
from catcache.index.semantic import SemanticIndex
from catcache.store.documents import DocumentStore
from catcache.store.embedded import EmbeddedRedis


def fresh_questions(texts: list[str], n: int, seed: int = 7) -> list[str]:
    """`n` questions of 8-12 random words drawn from `texts`: unlike each other and the streams."""
    words = sorted({w.strip("?,.").lower() for t in texts for w in t.split() if w.isalpha()})
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(8, 12))).capitalize() + "?" for _ in range(n)]


def miss_overhead(backend_url: str, embed_url: str, redis_url: str, litellm: Path | None, policies: Path,
                  n: int, loaded: dict) -> dict:
    """p50/p99 of a miss through each system and its median paired difference with the backend direct."""
    texts = [q["text"] for queries, _ in loaded.values() for q in queries]
    with ExitStack() as running:
        systems: dict[str, tuple[str, str]] = {"backend direct": (backend_url, "bench")}
        if litellm:
            systems["LiteLLM, cache off"] = running.enter_context(litellm_proxy(litellm, backend_url, embed_url))
            systems["LiteLLM, redis-semantic"] = running.enter_context(
                litellm_proxy(litellm, backend_url, embed_url, redis_url, DOCS_EXAMPLE_SIMILARITY))
        systems["catcache"] = (running.enter_context(stack.proxy(backend_url, policies)).base_url, "catcache-bench")
        clients = {name: running.enter_context(OpenAI(base_url=url, api_key=key, max_retries=0, timeout=120))
                   for name, (url, key) in systems.items()}
        questions = iter(fresh_questions(texts, (n + 5) * len(clients)))
        times: dict[str, list[float]] = {name: [] for name in clients}
        order = list(clients)
        for round_ in range(n + 5):
            order = order[1:] + order[:1]  # who goes first rotates
            for name in order:
                _, ms = ask(clients[name], MODEL, [{"role": "user", "content": next(questions)}])
                if round_ >= 5:  # five warm-up rounds
                    times[name].append(ms)
    direct = times["backend direct"]
    return {name: {**output.percentiles(ms, (50, 99)),
                   "added_p50": None if name == "backend direct" else
                   round(statistics.median(a - b for a, b in zip(ms, direct)), 2)}
            for name, ms in times.items()}


def memory(entries: int, embed: Callable[[str], np.ndarray]) -> dict:
    """Bytes per entry for catcache, RedisVL and GPTCache holding the same `entries`."""
    rng = random.Random(3)
    docs = [redis_memory.entry(n, rng, 1200) for n in range(entries)]
    result = {"entries": entries, "answer_chars": 1200}
    with tempfile.TemporaryDirectory(prefix="peers-memory-") as tmp:
        with EmbeddedRedis(Path(tmp) / "catcache") as server:
            stored = asyncio.run(redis_memory.measure(server.url, entries, 1200))["bytes_per_entry"]
        gc.collect()
        before = scale.rss()
        index, _ = synthetic.build_index(entries)
        in_process = (scale.rss() - before) / entries
        del index
        result["catcache"] = {"redis": stored, "index_rss": round(in_process), "total": round(stored + in_process)}

        server = SearchRedis(Path(tmp) / "redisvl").start()
        try:
            client = redis.Redis.from_url(server.url)
            vectors = {d.query: d.embedding for d in docs}
            cache = RedisVLPeer(0.9, lambda text: vectors[text] if text in vectors else embed(text), server.url)
            before = client.info("memory")["used_memory"]
            for doc in docs:
                cache.store(doc.query, doc.response["choices"][0]["message"]["content"])
            grown = client.info("memory")["used_memory"] - before
            result["RedisVL"] = {"redis": round(grown / entries), "total": round(grown / entries)}
            client.close()
        finally:
            server.stop()

        gc.collect()
        vectors = {d.query: d.embedding for d in docs}
        before = scale.rss()
        peer = GPTCachePeer(0.9, lambda text: vectors[text] if text in vectors else embed(text), entries,
                            folder=Path(tmp) / "gptcache-folder")
        for doc in docs:
            peer.store(doc.query, doc.response["choices"][0]["message"]["content"])
        grown = scale.rss() - before
        peer.cache.data_manager.close()
        on_disk = sum(f.stat().st_size for f in (Path(tmp) / "gptcache-folder").iterdir())
        result["GPTCache"] = {"rss": round(grown / entries), "disk": round(on_disk / entries),
                              "total": round(grown / entries)}
    print(f"  memory {result}", flush=True)
    return result


def restart(entries: int, systems: set[str], rounds: int = 3) -> dict:
    """Fill each system with `entries`, then restart them in turn, `rounds` times; medians.

    The fills take minutes (each builds an HNSW or FLAT index of `entries`); the restarts take
    seconds and run back to back, so they see the same load."""
    result: dict = {"entries": entries, "vectors": "synthetic unit vectors, 384 dimensions", "rounds": rounds}
    with tempfile.TemporaryDirectory(prefix="peers-restart-") as tmp:
        restarts: dict[str, Callable[[], dict]] = {}
        if "RedisVL" in systems:
            restarts["RedisVL"], result["RedisVL"] = redisvl_filled(Path(tmp) / "redisvl", entries)
        if "GPTCache" in systems:
            restarts["GPTCache"], result["GPTCache"] = gptcache_filled(Path(tmp) / "gptcache", entries)
        if "catcache" in systems:
            restarts["catcache"], result["catcache"] = asyncio.run(catcache_filled(Path(tmp) / "catcache", entries))
        print(f"  filled {result}", flush=True)
        timings: dict[str, list[dict]] = {name: [] for name in restarts}
        for _ in range(rounds):
            for name, again in restarts.items():
                gc.collect()
                timings[name].append(again())
        for name, runs in timings.items():
            result[name]["runs"] = runs
            result[name]["ready_s"] = round(statistics.median(r["ready_s"] for r in runs), 2)
    print(f"  restart {result}", flush=True)
    return result


def redisvl_filled(folder: Path, entries: int) -> tuple[Callable[[], dict], dict]:
    """A SemanticCache of `entries`, saved; and a restart of its redis-server: seconds until fully indexed."""
    server = SearchRedis(folder).start()
    cache = RedisVLPeer(0.9, lambda text: np.zeros(synthetic.DIM, np.float32), server.url)
    started = time.perf_counter()
    i = 0
    for block in synthetic.unit_vectors(entries):
        now = time.time()
        records = [{"prompt": f"synthetic query {i + k}", "response": "A cached answer of a few words.",
                    "prompt_vector": v.tobytes(), "entry_id": f"{i + k}", "inserted_at": now, "updated_at": now}
                   for k, v in enumerate(block)]
        cache.cache._index.load(records, id_field="entry_id")
        i += len(block)
    filled = {"fill_s": round(time.perf_counter() - started, 1)}
    name = cache.cache.index.name
    with redis.Redis.from_url(server.url, socket_timeout=600) as client:
        client.save()
    server.stop()
    filled["dump_bytes_per_entry"] = round((folder / "dump.rdb").stat().st_size / entries)
    probe = next(synthetic.unit_vectors(1, seed=9))[0].tolist()

    def again() -> dict:
        started = time.perf_counter()
        server.start()
        ping_s = time.perf_counter() - started
        try:
            with redis.Redis.from_url(server.url) as client:
                while True:
                    info = client.ft(name).info()
                    if float(info.get("percent_indexed", 1)) >= 1 and int(info["num_docs"]) >= entries:
                        break
                    time.sleep(0.05)
            found = cache.cache.check(vector=probe, distance_threshold=2.0)
            return {"ping_s": round(ping_s, 2), "ready_s": round(time.perf_counter() - started, 2),
                    "served": bool(found)}
        finally:
            server.stop()

    return again, filled


async def catcache_filled(folder: Path, entries: int) -> tuple[Callable[[], dict], dict]:
    """catcache's embedded Redis with `entries` documents and the index snapshot a shutdown saves; and
    a restart as `catcache serve` does it: Redis from its append-only file, then the snapshot loaded
    and checked against Redis' event stream (the process start and the model load are not in it)."""
    server = EmbeddedRedis(folder)
    server.start()
    client = Redis.from_url(server.url)
    started = time.perf_counter()
    await synthetic.fill_redis(client, entries, "factual")
    index = SemanticIndex(DocumentStore(client, "bench"), synthetic.DIM)
    await index.rebuild()
    snapshots = folder / "index"
    await index.save_snapshot(snapshots)
    filled = {"fill_s": round(time.perf_counter() - started, 1),
              "snapshot_bytes_per_entry": round(sum(f.stat().st_size for f in snapshots.iterdir()) / entries)}
    del index
    await client.aclose()
    server.stop()

    async def start() -> dict:
        started = time.perf_counter()
        server.start()
        redis_s = time.perf_counter() - started
        client = Redis.from_url(server.url)
        try:
            restored = await SemanticIndex(DocumentStore(client, "restarted"), synthetic.DIM).start(snapshots)
        finally:
            await client.aclose()
            server.stop()
        return {"redis_s": round(redis_s, 2), "ready_s": round(time.perf_counter() - started, 2), "entries": restored}

    return lambda: asyncio.run(start()), filled


def gptcache_filled(folder: Path, entries: int) -> tuple[Callable[[], dict], dict]:
    """GPTCache with `entries`, closed (it saves its hnswlib index); and a reopening: seconds until a get answers."""
    vectors = np.concatenate(list(synthetic.unit_vectors(entries)))
    known = {f"synthetic query {i}": v for i, v in enumerate(vectors)}
    started = time.perf_counter()
    peer = GPTCachePeer(0.9, lambda text: known.get(text, vectors[0]), entries, folder=folder)
    peer.cache.data_manager.import_data(list(known), ["answer"] * entries, list(vectors), [None] * entries)
    peer.cache.data_manager.close()
    del peer
    filled = {"fill_s": round(time.perf_counter() - started, 1),
              "disk_bytes_per_entry": round(sum(f.stat().st_size for f in folder.iterdir()) / entries)}

    def again() -> dict:
        started = time.perf_counter()
        peer = GPTCachePeer(0.9, lambda text: known.get(text, vectors[0]), entries, folder=folder)
        peer.empty = False
        served = peer.lookup("synthetic query 7")
        ready_s = time.perf_counter() - started
        peer.cache.data_manager.close()
        return {"ready_s": round(ready_s, 2), "served": served is not None}

    return again, filled
