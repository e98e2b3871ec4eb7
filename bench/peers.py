"""catcache side by side with RedisVL, LiteLLM and GPTCache: same streams, same MiniLM vectors, same backend.

    python -m bench.peers --litellm VENV/bin/litellm [--limit 1000] [--workloads DIR]

- Streams: the measurement half of comqa-dev and of qqp-dev (bench/heldout.py), QQP graded on
  labeled pairs only; the first `--limit` queries of each, replayed in order, one at a time.
- RedisVL 0.28 `SemanticCache` on Redis 8 + RediSearch (bench/redis_search.py) and GPTCache 0.1.44
  (`get`/`put`), as libraries in this process; their vectorizer is catcache's MiniLM embedder.
- The LiteLLM proxy (`litellm[proxy]`, its own venv) over HTTP, cache off and `redis-semantic`
  on the same Redis, embedding through `bench.embedding_server` (the same MiniLM).
- catcache as shipped (`policies.yaml`), cold start, `catcache serve` over HTTP.

Each peer's hit rate is taken at its best threshold for the false-hit bound (2% ComQA, 3% QQP),
found by a sweep (RedisVL, GPTCache; LiteLLM is RedisVL underneath, so it runs at RedisVL's
best, on the first `--litellm-limit` queries, with RedisVL replayed on those same queries beside
it); catcache runs once, as shipped. The other columns: bench/peer_costs.py, bench/peer_probes.py,
bench/peer_install.py. Results: bench/results/peers.json; the table: bench/README.md, section 2.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import redis

from bench import output, peer_costs, peer_probes, stack
from bench.heldout import HELDOUT, TRAIN, labeled_pairs, split_stream
from bench.paths import add_workloads, workload
from bench.peer_gptcache import DEFAULT_COSINE as GPTCACHE_DEFAULT
from bench.peer_gptcache import GPTCachePeer
from bench.peer_litellm import DOCS_EXAMPLE_SIMILARITY
from bench.peer_litellm import proxy as litellm_proxy
from bench.peer_redisvl import DEFAULT_COSINE as REDISVL_DEFAULT
from bench.peer_redisvl import RedisVLPeer
from bench.peer_replay import Library, best_under, exact_probe, grade, proxy_lookup, replay_library, replay_proxy
from bench.redis_search import search_redis
from catcache.verify.labels import Grader

BOUNDS = {"comqa-dev": 0.02, "qqp-dev": 0.03}  # the false-hit rate each hit rate is read at
SWEEP = (0.80, 0.85, 0.88, 0.90, 0.92, 0.94, 0.96, 0.98)
EXACT_PROBES = 200
MODEL = "test-model"


def load(workloads: Path | None, name: str, limit: int | None, half: int = HELDOUT) -> tuple[list[dict], Grader]:
    """One half of a workload (the measurement half unless told), cut to `limit` queries, and its grading rule."""
    folder = workload(workloads, name)
    queries = split_stream(folder, half)[:limit]
    return queries, Grader.for_rows(queries, labeled_pairs(folder, half))


class Vectors:
    """MiniLM through catcache's embedder: live (the latency runs) or looked up (the sweeps)."""

    def __init__(self) -> None:
        from catcache.index.embedder import Embedder

        self.embedder = Embedder()
        self.known: dict[str, np.ndarray] = {}

    def prepare(self, texts: list[str]) -> None:
        missing = sorted({t for t in texts if t not in self.known})
        for text, vector in zip(missing, self.embedder.encode(missing) if missing else []):
            self.known[text] = vector

    def live(self, text: str) -> np.ndarray:
        return self.embedder.encode([text])[0]

    def lookup(self, text: str) -> np.ndarray:
        vector = self.known.get(text)
        return vector if vector is not None else self.live(text)


def sweep(make: Callable[[float], Library], queries: list[dict], grader: Grader, cosines: list[float]) -> list[dict]:
    runs = []
    for cosine in cosines:
        cache = make(cosine)
        try:
            run = replay_library(cache, queries)
        finally:
            cache.close()
        runs.append({"cosine": cosine, **grade(queries, run.sources, grader)})
        print(f"  cosine {cosine:g}: {runs[-1]}", flush=True)
    return runs


def library_latency(make: Callable[[float], Library], cosine: float, queries: list[dict]) -> dict:
    """Replay at `cosine` with MiniLM run on every call, then ask the stored queries again."""
    cache = make(cosine)
    try:
        run = replay_library(cache, queries)
        return {"cosine": cosine, "replay": run.latencies(queries),
                "store_ms": output.percentiles(run.store_ms, (50, 99)),
                "exact_repeat": exact_probe(cache.lookup, queries, run, EXACT_PROBES)}
    finally:
        cache.close()


def proxy_run(base_url: str, api_key: str, model: str, queries: list[dict], grader: Grader,
              latency: bool = False) -> dict:
    """Replay through a proxy; with `latency`, also the latencies and an exact-repeat probe."""
    run = replay_proxy(base_url, api_key, model, queries)
    result = {**grade(queries, run.sources, grader), "sources": run.sources}
    if latency:
        lookup = proxy_lookup(base_url, api_key, model, set(run.answers))
        result.update(latency=run.latencies(queries), exact_repeat=exact_probe(lookup, queries, run, EXACT_PROBES))
    print(f"  { {k: v for k, v in result.items() if k != 'sources'} }", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_workloads(parser)
    parser.add_argument("--streams", default=",".join(BOUNDS), help="comma-separated workload names or folders")
    parser.add_argument("--limit", type=int, default=1000, help="replay the first N queries of each stream")
    parser.add_argument("--litellm", type=Path, help="the `litellm` executable of a venv with litellm[proxy]; "
                                                     "without it LiteLLM is skipped")
    parser.add_argument("--litellm-limit", type=int, default=400,
                        help="LiteLLM replays the first N queries of each stream (each takes minutes over HTTP)")
    parser.add_argument("--sweep", type=lambda s: [float(x) for x in s.split(",")], default=list(SWEEP),
                        help="cosine thresholds swept for RedisVL and GPTCache")
    parser.add_argument("--policies", type=Path, default=stack.DEFAULT_POLICIES)
    parser.add_argument("--restart-entries", type=int, default=100_000)
    parser.add_argument("--restart-systems", default="catcache,RedisVL,GPTCache")
    parser.add_argument("--memory-entries", type=int, default=10_000)
    parser.add_argument("--misses", type=int, default=200, help="fresh questions per system for the miss overhead")
    parser.add_argument("--parts", default="hits,overhead,probes,memory,restart",
                        help="hits (and latency); overhead and probes need hits; memory; restart")
    parser.add_argument("--name", default="peers")
    parser.add_argument("--update", action="store_true",
                        help="lay this run's parts over the results file's (e.g. one restart system again)")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    result: dict = {"limit": args.limit, "load_average": {"start": load_average()}}
    vectors = Vectors()
    if parts & {"hits", "overhead", "probes"}:
        result.update(side_by_side(args, parts, vectors))
        result["load_average"]["after_hits"] = load_average()
        output.save(args.name, updated(args.name, result) if args.update else result)  # kept if a later part fails
    if "memory" in parts:
        result["memory"] = peer_costs.memory(args.memory_entries, vectors.live)
    if "restart" in parts:
        result["restart"] = peer_costs.restart(args.restart_entries, set(args.restart_systems.split(",")))
    result["load_average"]["end"] = load_average()
    output.save(args.name, updated(args.name, result) if args.update else result)


def updated(name: str, result: dict) -> dict:
    """The earlier results file `name` with the parts of `result` laid over it, one level deep."""
    earlier = output.RESULTS / f"{name}.json"
    document = json.loads(earlier.read_text()) if earlier.exists() else {}
    for key, value in result.items():
        if isinstance(value, dict) and isinstance(document.get(key), dict):
            document[key] = {**document[key], **value}
        else:
            document[key] = value
    return document


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def side_by_side(args: argparse.Namespace, parts: set[str], vectors: Vectors) -> dict:
    """Hit rates and latencies on every stream; then the miss overhead and the probes, if asked for."""
    result: dict = {}
    with ExitStack() as running:
        tmp = Path(running.enter_context(tempfile.TemporaryDirectory(prefix="peers-")))
        redis = running.enter_context(search_redis(tmp / "redis"))
        backend_url = running.enter_context(stack.backend(0, 0))
        embed_url = running.enter_context(stack.test_server("bench.embedding_server"))
        hits: dict[str, dict] = {}
        loaded = {name: load(args.workloads, name, args.limit) for name in args.streams.split(",")}
        latency_stream = next(iter(loaded))
        latency: dict[str, dict] = {}
        for name, (queries, grader) in loaded.items():
            print(f"{name}: {len(queries)} queries, load average {load_average()}", flush=True)
            vectors.prepare([q["text"] for q in queries])
            row: dict = {"queries": len(queries), "bound": BOUNDS.get(Path(name).name, 0.02)}
            calibration, calibration_grader = load(args.workloads, name, args.limit, TRAIN)
            vectors.prepare([q["text"] for q in calibration])
            for peer, (make, default) in peer_makers(vectors.lookup, redis.url, len(queries)).items():
                print(f" {peer} sweep", flush=True)
                runs = sweep(make, queries, grader, sorted({*args.sweep, default}))
                row[peer] = {"sweep": runs, "best": best_under(runs, row["bound"]),
                             "default": next(r for r in runs if r["cosine"] == default)}
                if peer == "RedisVL":
                    # The threshold a user would pick without the answers: the best on the other
                    # half, as catcache's were calibrated. (GPTCache's sweep matches RedisVL's at
                    # every point: the same vectors, an exact and a near-exact search.)
                    picked = best_under(sweep(make, calibration, calibration_grader, args.sweep), row["bound"])
                    row[peer]["calibrated"] = picked and next(r for r in runs if r["cosine"] == picked["cosine"])
            print(" catcache as shipped", flush=True)
            with timed_proxy(backend_url, args.policies) as (url, ready_s):
                measured = proxy_run(url, "catcache-bench", MODEL, queries, grader, name == latency_stream)
                measured.pop("sources")
                row["catcache"] = {"cold_start_s": round(ready_s, 1), **measured}
            hits[name] = row
        queries, _ = loaded[latency_stream]
        for peer, (make, _) in peer_makers(vectors.live, redis.url, len(queries)).items():
            best = hits[latency_stream][peer]["best"]
            if best is not None:
                print(f" {peer} latency at cosine {best['cosine']:g}", flush=True)
                latency[peer] = library_latency(make, best["cosine"], queries)
        if args.litellm:
            prefixes = {name: (queries[:args.litellm_limit], grader) for name, (queries, grader) in loaded.items()}
            litellm_runs(args.litellm, backend_url, embed_url, redis.url, prefixes, hits, latency_stream)
            for name, (queries, grader) in prefixes.items():  # RedisVL on the same queries, for the check
                make = peer_makers(vectors.lookup, redis.url, len(queries))["RedisVL"][0]
                for run in hits[name]["LiteLLM"].values():
                    run["RedisVL_same_queries"] = sweep(make, queries, grader, [run["cosine"]])[0]
        result.update(streams=hits, library_latency=latency)
        if "overhead" in parts:
            print(f"miss overhead, load average {load_average()}", flush=True)
            result["miss_overhead"] = peer_costs.miss_overhead(backend_url, embed_url, redis.url, args.litellm,
                                                               args.policies, args.misses, loaded)
        if "probes" in parts:
            result["probes"] = peer_probes.run_all(backend_url, embed_url, redis.url, args.litellm, args.policies,
                                                   vectors.live, hits)
    return result


def peer_makers(embed: Callable[[str], np.ndarray], redis_url: str, capacity: int) -> dict:
    """Per library peer: (a factory of a fresh cache at a cosine threshold, its default threshold)."""
    return {"RedisVL": (lambda c: RedisVLPeer(c, embed, redis_url), REDISVL_DEFAULT),
            "GPTCache": (lambda c: GPTCachePeer(c, embed, capacity), GPTCACHE_DEFAULT)}


@contextmanager
def timed_proxy(backend_url: str, policies: Path) -> Iterator[tuple[str, float]]:
    """A fresh catcache (cold: empty cache, its own Redis); (base URL, seconds from launch to ready)."""
    started = time.perf_counter()
    with stack.proxy(backend_url, policies) as running:
        yield running.base_url, time.perf_counter() - started


def used_memory(url: str) -> int:
    with redis.Redis.from_url(url) as client:
        return int(client.info("memory")["used_memory"])


def litellm_runs(executable: Path, backend_url: str, embed_url: str, redis_url: str,
                 loaded: dict[str, tuple[list[dict], Grader]], hits: dict[str, dict], latency_stream: str) -> None:
    """LiteLLM's redis-semantic cache at its docs' example threshold and at RedisVL's best, per stream.

    One proxy per threshold; each stream is sent as its own model name, which LiteLLM keys its
    cache on, so the streams never serve each other."""
    wanted: dict[float, dict[str, list[str]]] = {DOCS_EXAMPLE_SIMILARITY: {n: ["default"] for n in loaded}}
    for name in loaded:
        best = hits[name]["RedisVL"]["best"]
        if best is not None:
            wanted.setdefault(best["cosine"], {}).setdefault(name, []).append("best")
        hits[name]["LiteLLM"] = {}
    for cosine, jobs in wanted.items():
        started = time.perf_counter()
        with litellm_proxy(executable, backend_url, embed_url, redis_url, cosine, models=[MODEL, *loaded]) as (url, key):
            ready_s = time.perf_counter() - started
            for name, roles in jobs.items():
                print(f" LiteLLM {name} at {cosine:g} ({', '.join(roles)})", flush=True)
                queries, grader = loaded[name]
                before = used_memory(redis_url)
                measured = proxy_run(url, key, name, queries, grader, name == latency_stream and "best" in roles)
                stored = sum(1 for s in measured.pop("sources") if s is None)
                measured["redis_bytes_per_entry"] = round((used_memory(redis_url) - before) / max(1, stored))
                for role in roles:
                    hits[name]["LiteLLM"][role] = {"cosine": cosine, "cold_start_s": round(ready_s, 1), **measured}


if __name__ == "__main__":
    main()
