"""catcache against GPTCache on one workload with one embedding model (MiniLM through our Embedder).

    python -m bench.peers --heldout [--limit N]

- GPTCache 0.1.44 (`pip install -e .[bench]`), the semantic cache most deployments start from:
  its `get`/`put` API, SQLite for the answers, hnswlib for the vectors (the same library catcache
  uses, so the comparison is of the caching policy, not of the ANN library), and its default
  SearchDistanceEvaluation. Its threshold t is on a 0..4 scale of squared L2 distance; for unit
  vectors t keeps a neighbour with cosine >= 2t - 1, so the sweep is given in cosine.
- catcache as configured (per-category thresholds, verifier, IC band), through the running proxy
  (`bench.replay`), and catcache with one threshold for every category and no verifier (ablation).

Both replay the workload in order: a query that misses is cached, a hit is graded by the labels of
the query whose answer it served (verify/labels.py). The table gives each one's hit rate at catcache's false-hit rate,
interpolated between the two sweep points around it. Lookup latency: GPTCache's `get` in process
plus one MiniLM embedding; catcache's is the whole OpenAI-SDK round trip of a hit and of a miss
through the proxy (backend think time 0), so it includes HTTP and is the heavier measure.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from bench import output, replay, stack, workload
from catcache.verify.labels import Grader

COSINE_SWEEP = (0.85, 0.90, 0.93, 0.96, 0.98)
UNIFORM_SWEEP = (0.90, 0.95, 0.98)


def grade(queries: list[dict], sources: Sequence[int | None], grader: Grader) -> dict:
    """Overall hit rate and false-hit rate from, per query, the index of the query it was served from,
    graded as bench.replay grades (verify/labels.py)."""
    repeatable = hits = false = correct = 0
    for query, source, servable in zip(queries, sources, workload.servable(grader, queries)):
        repeatable += servable
        if source is not None:
            hits += 1
            right = grader.right(query, queries[source])
            correct += right is True
            false += right is False
    return {"queries": len(queries), "repeatable": repeatable, "hits": hits, "false": false,
            "hit_rate": round(correct / repeatable, 4) if repeatable else None,
            "false_hit_rate": round(false / (correct + false), 4) if correct + false else None}


def gptcache_run(queries: list[dict], vectors: np.ndarray, cosine: float, embed_ms: float,
                 grader: Grader | None = None) -> dict:
    """Replay through a fresh GPTCache that keeps neighbours at `cosine` or above."""
    from gptcache import Cache, Config
    from gptcache.adapter.api import get, put
    from gptcache.manager import CacheBase, VectorBase, get_data_manager
    from gptcache.processor.pre import get_prompt
    from gptcache.similarity_evaluation.distance import SearchDistanceEvaluation

    vector_of = {q["text"]: v for q, v in zip(queries, vectors)}
    with tempfile.TemporaryDirectory(prefix="gptcache-") as tmp:
        cache = Cache()
        cache.init(
            pre_embedding_func=get_prompt,
            embedding_func=lambda text, **_: vector_of[text],  # embedded once, before the timing
            data_manager=get_data_manager(
                CacheBase("sqlite", sql_url=f"sqlite:///{tmp}/cache.db"),
                VectorBase("hnswlib", dimension=vectors.shape[1], index_path=f"{tmp}/hnsw.bin",
                           top_k=1, max_elements=len(queries) + 1),
                # GPTCache keeps 1,000 entries by default and evicts the rest; catcache's quota
                # never binds on this workload, so neither may GPTCache's.
                max_size=len(queries) + 1),
            similarity_evaluation=SearchDistanceEvaluation(),
            config=Config(similarity_threshold=(cosine + 1) / 2),
        )
        store = cache.data_manager.v
        store._index.set_ef(64)  # GPTCache sets ef = 2 * top_k; catcache searches at 64
        search = store.search
        # GPTCache's hnswlib store returns numpy.uint64 ids, which match no row in its SQLite store
        # (every lookup misses); plain ints are what the store expects.
        store.search = lambda data, top_k=-1: [(float(d), int(i)) for d, i in search(data, top_k)]
        sources: list[int | None] = []
        lookups = []
        for i, query in enumerate(queries):
            started = time.perf_counter()
            served = get(query["text"], cache_obj=cache) if i else None  # hnswlib refuses an empty index
            lookups.append((time.perf_counter() - started) * 1000 + embed_ms)
            sources.append(int(served) if served is not None else None)
            if served is None:
                put(query["text"], str(i), cache_obj=cache)
    return {"system": "GPTCache", "setting": f"cosine >= {cosine:g} (t={(cosine + 1) / 2:g})",
            **grade(queries, sources, grader or Grader.for_rows(queries)), "lookup_ms": output.percentiles(lookups, (50, 99))}


def catcache_run(queries: list[dict], policies: Path, setting: str, concurrency: int, grader: Grader) -> dict:
    with stack.catcache(0, 0, policies) as base_url:
        result = asyncio.run(replay.replay(base_url, queries, concurrency, policies, grader=grader))
    overall = result["rates"]["overall"]
    return {"system": "catcache", "setting": setting,
            **{k: overall[k] for k in ("queries", "repeatable", "hits", "false", "hit_rate", "false_hit_rate")},
            "lookup_ms": {"hit_p50": overall["hit_ms"]["p50"], "miss_p50": overall["miss_ms"]["p50"]},
            "per_category": {k: {"hit_rate": v["hit_rate"], "false_hit_rate": v["false_hit_rate"]}
                             for k, v in result["rates"].items() if k != "overall"}}


def at_false_rate(runs: list[dict], target: float) -> float | None:
    """Hit rate at false-hit rate `target`, interpolated along a sweep (None outside its range)."""
    points = sorted((r["false_hit_rate"], r["hit_rate"]) for r in runs if r["false_hit_rate"] is not None)
    for (f0, h0), (f1, h1) in zip(points, points[1:]):
        if f0 <= target <= f1:
            return round(h0 + (h1 - h0) * (target - f0) / (f1 - f0), 4) if f1 > f0 else round(max(h0, h1), 4)
    return None


def embed_cost(encode: Callable[[list[str]], np.ndarray], texts: list[str]) -> float:
    """Median milliseconds to embed one query on its own, as a lookup does."""
    times = []
    for text in texts:
        started = time.perf_counter()
        encode([text])
        times.append((time.perf_counter() - started) * 1000)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    workload.add_arguments(parser)
    parser.add_argument("--policies", type=Path, default=stack.DEFAULT_POLICIES)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--gptcache-cosines", type=lambda s: [float(x) for x in s.split(",")],
                        default=list(COSINE_SWEEP))
    parser.add_argument("--uniform", type=lambda s: [float(x) for x in s.split(",")], default=list(UNIFORM_SWEEP),
                        help="thresholds of the one-threshold catcache ablation")
    parser.add_argument("--name", default="peers")
    args = parser.parse_args()
    name, queries, grader = workload.load(args)

    from catcache.index.embedder import Embedder

    embedder = Embedder()
    vectors = embedder.encode([q["text"] for q in queries])
    embed_ms = embed_cost(embedder.encode, [q["text"] for q in queries[:200]])
    gptcache = [gptcache_run(queries, vectors, c, embed_ms, grader) for c in args.gptcache_cosines]
    configured = catcache_run(queries, args.policies, f"per-category ({args.policies.name})", args.concurrency,
                              grader)
    uniform = []
    for threshold in args.uniform:
        with stack.uniform_policies(args.policies, threshold) as policies:
            uniform.append(catcache_run(queries, policies, f"uniform {threshold:g}, no verifier", args.concurrency,
                                        grader))

    target = configured["false_hit_rate"] or 0.0
    matched = {"false_hit_rate": target, "catcache per-category": configured["hit_rate"],
               "catcache uniform": at_false_rate(uniform, target), "GPTCache": at_false_rate(gptcache, target)}
    rows = [[r["system"], r["setting"], r["hits"], output.fmt(r["hit_rate"], 3), output.fmt(r["false_hit_rate"], 3),
             " / ".join(f"{k} {output.fmt(v, 2)}" for k, v in r["lookup_ms"].items())]
            for r in [configured, *uniform, *gptcache]]
    output.show(f"{name}: {len(queries)} queries", ["system", "setting", "hits", "hit rate", "false-hit",
                                                     "lookup ms"], rows)
    output.show(f"hit rate at catcache's false-hit rate ({target:.3f})", ["system", "hit rate"],
                [[k, output.fmt(v, 3)] for k, v in matched.items() if k != "false_hit_rate"])
    output.save(args.name, {"workload": name, "queries": len(queries), "concurrency": args.concurrency,
                            "embed_ms_p50": round(embed_ms, 2), "at_equal_false_hit_rate": matched,
                            "catcache": configured, "catcache_uniform": uniform, "gptcache": gptcache})


if __name__ == "__main__":
    main()
