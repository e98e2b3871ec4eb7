"""What catcache itself costs: latency added to a miss, hit latency, and hits per second.

    python -m bench.overhead [--queries 300] [--think-ms 0 --tokens-per-s 0]

One run, through the OpenAI SDK, against the test backend in its own process:
- miss: each round sends one new query straight to the backend and another new query through
  catcache (embedding, both tiers, the backend call, the store), alternating, so both sides see
  the same machine load; the added latency is proxy minus direct at each percentile, the ratio
  proxy / direct. The backend answers at once by default, so the difference is all catcache's.
- exact hit: the same queries again; semantic hit: each query in lower case (MiniLM is uncased,
  so the neighbour is found at similarity 1.0, but the exact tier misses).
- throughput: exact and semantic hits on the warmed cache at concurrency 1, 8 and 32.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from pathlib import Path

from openai import AsyncOpenAI

from bench import output, replay, stack

WORDS = ("amber basil cobalt dune ember fjord garnet harbor indigo juniper kelp lumen maple nimbus orchid pylon "
         "quartz raven saffron tundra umber vortex willow xenon yarrow zephyr anchor beacon cinder delta").split()
CONCURRENCY = (1, 8, 32)


def probes(n: int, seed: int = 7) -> list[str]:
    """Distinct queries that neither tier can answer from each other."""
    rng = random.Random(seed)
    return [f"Question {i}: what links {' and '.join(rng.sample(WORDS, 4))}?" for i in range(n)]


async def hits_per_second(client: AsyncOpenAI, texts: list[str], concurrency: int, total: int) -> dict:
    """Send `total` requests cycling over `texts`, `concurrency` at a time."""
    queue = iter(range(total))
    outcomes: list[str] = []

    async def worker() -> None:
        for i in queue:
            outcomes.append((await replay.ask(client, texts[i % len(texts)])).outcome)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    hits = sum(o in replay.HITS for o in outcomes)
    return {"concurrency": concurrency, "requests": total, "hits": hits, "hits_per_s": round(hits / elapsed, 1)}


async def measure(backend_url: str, proxy_url: str, n: int, total: int) -> dict:
    texts = probes(2 * n)
    direct_texts, proxied = texts[:n], texts[n:]
    async with AsyncOpenAI(base_url=backend_url, api_key="bench", max_retries=0) as direct, \
            AsyncOpenAI(base_url=proxy_url, api_key="bench", max_retries=0) as client:
        for warm in probes(5, seed=99):  # model, connections and code paths warm
            await replay.ask(client, warm)
            await replay.ask(direct, warm)
        backend_ms, miss_ms, outcomes = [], [], []
        for straight, through in zip(direct_texts, proxied):
            backend_ms.append((await replay.ask(direct, straight)).latency_ms)
            answer = await replay.ask(client, through)
            miss_ms.append(answer.latency_ms)
            outcomes.append(answer.outcome)
        exact = [await replay.ask(client, text) for text in proxied]
        semantic = [await replay.ask(client, text.lower()) for text in proxied]
        throughput = {
            "exact": [await hits_per_second(client, proxied, c, total) for c in CONCURRENCY],
            "semantic": [await hits_per_second(client, [t.lower() for t in proxied], c, total) for c in CONCURRENCY],
        }
    direct_p, miss_p = output.percentiles(backend_ms, (50, 99)), output.percentiles(miss_ms, (50, 99))
    return {
        "miss": {"direct_ms": direct_p, "proxy_ms": miss_p,
                 "added_ms": {p: round(miss_p[p] - direct_p[p], 3) for p in direct_p},
                 "ratio": {p: round(miss_p[p] / direct_p[p], 3) for p in direct_p},
                 "outcomes": {o: outcomes.count(o) for o in set(outcomes)}},
        "exact_hit": {"ms": output.percentiles([a.latency_ms for a in exact if a.outcome == "hit-exact"], (50, 99)),
                      "hits": sum(a.outcome == "hit-exact" for a in exact), "of": n},
        "semantic_hit": {"ms": output.percentiles([a.latency_ms for a in semantic if a.outcome == "hit-semantic"],
                                                  (50, 99)),
                         "hits": sum(a.outcome == "hit-semantic" for a in semantic), "of": n},
        "throughput": throughput,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=300, help="misses (and hits) measured on each side")
    parser.add_argument("--requests", type=int, default=600, help="requests per throughput point")
    parser.add_argument("--think-ms", type=float, default=0)
    parser.add_argument("--tokens-per-s", type=float, default=0)
    parser.add_argument("--policies", type=Path, default=stack.DEFAULT_POLICIES)
    parser.add_argument("--name", default="overhead")
    args = parser.parse_args()
    with stack.backend(args.think_ms, args.tokens_per_s) as backend_url, \
            stack.proxy(backend_url, args.policies) as running:
        result = asyncio.run(measure(backend_url, running.base_url, args.queries, args.requests))
    miss = result["miss"]
    output.show("catcache overhead (ms)", ["measure", "p50", "p99"], [
        ["backend direct", miss["direct_ms"]["p50"], miss["direct_ms"]["p99"]],
        ["miss through catcache", miss["proxy_ms"]["p50"], miss["proxy_ms"]["p99"]],
        ["added by catcache", miss["added_ms"]["p50"], miss["added_ms"]["p99"]],
        ["ratio (x)", miss["ratio"]["p50"], miss["ratio"]["p99"]],
        ["exact hit", result["exact_hit"]["ms"]["p50"], result["exact_hit"]["ms"]["p99"]],
        ["semantic hit", result["semantic_hit"]["ms"]["p50"], result["semantic_hit"]["ms"]["p99"]],
    ])
    output.show("hits per second on a warmed cache", ["tier", *(f"c={c}" for c in CONCURRENCY)],
                [[tier, *(p["hits_per_s"] for p in points)] for tier, points in result["throughput"].items()])
    output.save(args.name, {"queries": args.queries, "backend": {"think_ms": args.think_ms,
                                                                 "tokens_per_s": args.tokens_per_s},
                            "policies": str(args.policies), **result})


if __name__ == "__main__":
    main()
