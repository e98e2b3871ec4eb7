"""The median cost of a miss's lookup at 100k cached entries, with and without the embedding.

    python -m bench.lookup_cost [--entries 100000] [--queries 500]

The steps of proxy/pipeline.py, in process and in order, for real queries of qqp-dev against an
index of synthetic entries (so every query misses and walks the whole path): canonicalise,
classify by rules, the functional tier's Redis read, [embed], classify by exemplar, the HNSW
search of the category, and the Redis read of the best neighbour (the read a hit would serve;
a miss below the threshold skips it, so this is the upper bound). HTTP and the backend call are
left out: this is what the cache adds before a miss goes to the backend.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from redis.asyncio import Redis

from bench import output, synthetic
from bench.heldout import read_jsonl
from bench.paths import add_workloads, workload
from bench.stack import DEFAULT_POLICIES
from catcache.categories.classifier import Classifier, RequestTraits
from catcache.index.embedder import Embedder
from catcache.index.hnsw import CategoryIndex
from catcache.policy.loader import load_policy
from catcache.proxy.canonical import canonicalise
from catcache.store.documents import DocumentStore
from catcache.store.embedded import EmbeddedRedis

NEIGHBOURS = 32  # the pipeline's 8, searched 4x wider to filter scopes


async def lookups(texts: list[str], vectors: np.ndarray, encode: Callable[[list[str]], np.ndarray] | None,
                  classifier: Classifier, store: DocumentStore, index: CategoryIndex) -> list[float]:
    """Milliseconds per lookup; `encode` None uses the precomputed vector (lookup without embedding)."""
    times = []
    for text, precomputed in zip(texts, vectors):
        started = time.perf_counter()
        body = {"model": "test-model", "messages": [{"role": "user", "content": text}]}
        canon = canonicalise("chat", body)
        traits = RequestTraits(canon.model, "/v1/chat/completions", None, canon.query_text, canon.has_code)
        ruled = classifier.by_rules(traits)
        await store.get_many([canon.functional_key])
        vector = encode([canon.query_text])[0] if encode else precomputed
        ruled or classifier.classify(traits, vector)
        neighbours = [n for n in index.search(vector, NEIGHBOURS) if n.entry.scope_key == synthetic.SCOPE]
        await store.get_many([neighbours[0].entry.doc_id])
        times.append((time.perf_counter() - started) * 1000)
    return times


async def measure(entries: int, texts: list[str], policies: Path) -> dict:
    embedder = Embedder()
    classifier = Classifier.build(load_policy(policies), embedder.encode)
    vectors = embedder.encode(texts)
    index, _ = synthetic.build_index(entries)
    with tempfile.TemporaryDirectory(prefix="catcache-lookup-") as tmp, EmbeddedRedis(tmp) as server:
        redis = Redis.from_url(server.url)
        try:
            await synthetic.fill_redis(redis, entries, "factual")
            store = DocumentStore(redis, "bench")
            await lookups(texts[:20], vectors, None, classifier, store, index)  # warm
            without = await lookups(texts, vectors, None, classifier, store, index)
            with_embedding = await lookups(texts, vectors, embedder.encode, classifier, store, index)
        finally:
            await redis.aclose()
    return {"without_embedding_ms": output.percentiles(without, (50, 99)),
            "with_embedding_ms": output.percentiles(with_embedding, (50, 99))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--stream", type=Path, help="a stream.jsonl (default: qqp-dev's)")
    add_workloads(parser)
    parser.add_argument("--policies", type=Path, default=DEFAULT_POLICIES)
    parser.add_argument("--name", default="lookup_cost")
    args = parser.parse_args()
    stream = args.stream or workload(args.workloads, "qqp-dev") / "stream.jsonl"
    texts = [q["text"] for q in read_jsonl(stream)[: args.queries]]
    result = asyncio.run(measure(args.entries, texts, args.policies))
    output.show(f"lookup cost of a miss at {args.entries} entries (ms)", ["lookup", "p50", "p99"], [
        ["without embedding", *result["without_embedding_ms"].values()],
        ["with embedding", *result["with_embedding_ms"].values()],
    ])
    output.save(args.name, {"entries": args.entries, "queries": len(texts), "stream": str(args.stream),
                            "steps": "canonicalise, rules, exact-tier read, [embed], exemplar class, HNSW k=32, "
                                     "neighbour read", **result})


if __name__ == "__main__":
    main()
