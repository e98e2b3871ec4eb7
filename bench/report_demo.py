"""Fill the report counters with a simulated day of traffic, to see a report before a real replay.

Queries come from a workload's stream.jsonl in order, spread over the last `--hours`. Each is
embedded with catcache's embedder and looked up among the earlier *misses* of its category, as the
proxy would: an identical text is an exact hit, a neighbour at or above the category's threshold a
semantic hit, one inside the IC band an IC answer, anything else a miss that is stored. Tokens and
latencies are drawn from plausible distributions (no backend is called); the records go through
the real `Recorder`, so the counters are exactly what a proxy would have written.

    python bench/report_demo.py --redis redis://127.0.0.1:6379/0 [--limit 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import numpy as np
from redis.asyncio import Redis

from catcache.index.embedder import Embedder
from catcache.policy.loader import load_policy
from catcache.policy.schema import Policy
from catcache.reports.record import RequestRecord
from catcache.reports.recorder import Recorder

STREAM = Path(__file__).resolve().parents[2] / "shared" / "workloads" / "qqp-dev" / "stream.jsonl"
MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", required=True)
    parser.add_argument("--stream", type=Path, default=STREAM)
    parser.add_argument("--policies", type=Path, default=None)
    parser.add_argument("--limit", type=int, default=20000)
    parser.add_argument("--hours", type=float, default=24.0)
    args = parser.parse_args()
    queries = [json.loads(line) for line in args.stream.open()][: args.limit]
    policy = load_policy(args.policies)
    vectors = Embedder(policy.embedding_model).encode([q["text"] for q in queries])
    records = simulate(queries, vectors, policy, time.time() - args.hours * 3600, args.hours * 3600)
    asyncio.run(write(args.redis, policy, records))
    print(f"wrote {len(records)} records to {args.redis}")


def simulate(queries: list[dict], vectors: np.ndarray, policy: Policy, start: float, span: float
             ) -> list[RequestRecord]:
    rng = np.random.default_rng(7)
    stored: dict[str, list[int]] = {}  # category -> indexes of stored misses
    answers: dict[int, tuple[int, int, float]] = {}  # stored index -> prompt, completion tokens, latency
    texts: dict[str, int] = {}
    records = []
    for i, query in enumerate(queries):
        name = query["category"] if query["category"] in policy.categories else policy.classifier.default
        category = policy.categories[name]
        at = start + span * (i + rng.random()) / len(queries)
        key = " ".join(query["text"].lower().split())
        similarity, best = None, None
        if stored.get(name):
            sims = vectors[stored[name]] @ vectors[i]
            j = int(np.argmax(sims))
            similarity, best = float(sims[j]), stored[name][j]
        if key in texts:
            prompt, completion, backend = answers[texts[key]]
            records.append(RequestRecord("hit-exact", name, MODEL, latency_ms=rng.uniform(1.0, 4.0),
                                         backend_latency_ms=backend, prompt_tokens=prompt,
                                         completion_tokens=completion, time=at))
            continue
        if best is not None and similarity >= category.threshold:
            prompt, completion, backend = answers[best]
            records.append(RequestRecord("hit-semantic", name, MODEL, similarity=similarity,
                                         latency_ms=rng.uniform(6.0, 22.0), backend_latency_ms=backend,
                                         prompt_tokens=prompt, completion_tokens=completion, time=at))
            continue
        prompt, completion = 20 + len(query["text"]) // 4, int(rng.lognormal(5.1, 0.5))
        if best is not None and category.ic and similarity >= category.ic.low:
            latency = 90 + 5.0 * completion * rng.uniform(0.8, 1.2)
            records.append(RequestRecord("ic", name, MODEL, similarity=similarity, latency_ms=latency + 8,
                                         backend_latency_ms=latency, prompt_tokens=prompt * 4,
                                         completion_tokens=completion, time=at))
            continue
        latency = 220 + 16.0 * completion * rng.uniform(0.8, 1.3)
        records.append(RequestRecord("miss", name, MODEL, similarity=similarity, latency_ms=latency + 10,
                                     backend_latency_ms=latency, prompt_tokens=prompt,
                                     completion_tokens=completion, time=at))
        stored.setdefault(name, []).append(i)
        answers[i] = (prompt, completion, latency)
        texts[key] = i
    return records


async def write(url: str, policy: Policy, records: list[RequestRecord]) -> None:
    redis = Redis.from_url(url)
    recorder = Recorder(redis, lambda: policy)
    for record in records:
        recorder.record(record)
    await recorder.close()
    await redis.aclose()


if __name__ == "__main__":
    main()
