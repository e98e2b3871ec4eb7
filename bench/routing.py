"""Prefix-affinity routing against round-robin over backend replicas that model vLLM's prefix cache.

    python -m bench.routing [--replicas 2 4] [--requests 600] [--prefixes 24] [--slots 8]

Each replica is the test backend in its own process with a prefix cache: a request whose system
prompt is not among the last `--slots` it saw waits `--prefix-ms` more (the prefill vLLM's
automatic prefix caching saves), on top of `--think-ms`. The workload is one sequence for every
run: `--prefixes` system prompts drawn with Zipf popularity (a few hot categories and tenants, a
long tail), each request a new question sent with `Cache-Control: no-store`, so every request
reaches a backend and what is measured is the routing alone. For each replica count, two stacks
run side by side, driven at once with the same requests: a catcache with `routing: round-robin`
and one with `routing: prefix`, each in front of its own replicas. The table gives the prefix-cache
hit rate summed over the replicas, the client's latency, and the busiest replica's share of the
requests (bounded load keeps it near 1/n). The test backend has no queue, so the latency shows
the prefill saved, not the queueing a hot replica would add.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import yaml

from bench import output
from bench.stack import DEFAULT_POLICIES, test_server
from catcache.testing.proxy import ProxyProcess

MODES = ("round-robin", "prefix")


@contextmanager
def replica(args: argparse.Namespace) -> Iterator[str]:
    """One test backend with a prefix cache, in its own process; yields its base URL."""
    with test_server("catcache.testing.backend", "--think-ms", str(args.think_ms), "--prefix-ms", str(args.prefix_ms),
                           "--prefix-slots", str(args.slots)) as url:
        yield url


def workload(args: argparse.Namespace) -> list[dict]:
    """The same requests for every run: Zipf-popular system prompts, every question new."""
    rng = random.Random(args.seed)
    weights = [1 / (rank + 1) ** args.zipf for rank in range(args.prefixes)]
    systems = [f"You are assistant {p} of tenant {p % 5}. Follow house style {p}. " + "Be precise. " * 40
               for p in range(args.prefixes)]
    chosen = rng.choices(range(args.prefixes), weights, k=args.requests)
    return [{"model": "test-model", "max_tokens": 16,
             "messages": [{"role": "system", "content": systems[p]},
                          {"role": "user", "content": f"Question {i} about topic {p}?"}]}
            for i, p in enumerate(chosen)]


async def drive(base_url: str, requests: list[dict], concurrency: int) -> list[float]:
    """Send every request, `concurrency` at a time; the latency of each in ms (all must succeed)."""
    latencies: list[float] = []
    queue = iter(requests)
    async with httpx.AsyncClient(base_url=base_url, timeout=60,
                                 headers={"authorization": "Bearer sk-bench", "cache-control": "no-store"}) as http:
        async def worker() -> None:
            for body in queue:
                started = time.perf_counter()
                response = await http.post("/chat/completions", json=body)
                response.raise_for_status()
                latencies.append((time.perf_counter() - started) * 1000)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def run(args: argparse.Namespace, replicas: int, requests: list[dict], tmp: Path) -> list[dict]:
    """Each routing in front of its own `replicas` backends, both driven at once with the same
    requests, so both see the same machine load."""
    with ExitStack() as stack:
        urls = {mode: [stack.enter_context(replica(args)) for _ in range(replicas)] for mode in MODES}
        proxies = {}
        for mode in MODES:
            policy = yaml.safe_load(DEFAULT_POLICIES.read_text())
            for settings in policy["backends"].values():
                settings.pop("url", None)
                settings.update(urls=urls[mode], routing=mode)
            path = tmp / f"policies-{replicas}-{mode}.yaml"
            path.write_text(yaml.safe_dump(policy))
            proxies[mode] = stack.enter_context(_running(ProxyProcess(None, path, tmp / f"data-{replicas}-{mode}")))

        async def both() -> list[list[float]]:
            return await asyncio.gather(*(drive(proxies[mode].base_url, requests, args.concurrency) for mode in MODES))

        latencies = dict(zip(MODES, asyncio.run(both())))
        return [summary(replicas, mode, latencies[mode], urls[mode]) for mode in MODES]


def summary(replicas: int, mode: str, latencies: list[float], urls: list[str]) -> dict:
    """The client's latencies and, from the replicas' own counts, their prefix-cache hits and load."""
    caches = [httpx.get(f"{url.removesuffix('/v1')}/stats/prefix-cache").json() for url in urls]
    calls = [httpx.get(f"{url.removesuffix('/v1')}/stats").json().get("/v1/chat/completions", 0) for url in urls]
    hits = sum(c["hits"] for c in caches)
    return {"replicas": replicas, "routing": mode, "requests": len(latencies),
            "prefix_hit_rate": round(hits / sum(c["hits"] + c["misses"] for c in caches), 4),
            "latency_ms": output.percentiles(latencies), "busiest_share": round(max(calls) / sum(calls), 3),
            "calls_per_replica": calls}


@contextmanager
def _running(proxy: ProxyProcess) -> Iterator[ProxyProcess]:
    proxy.start(timeout=180)
    try:
        yield proxy
    finally:
        proxy.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--prefixes", type=int, default=24, help="distinct system prompts")
    parser.add_argument("--zipf", type=float, default=1.0, help="popularity skew of the prefixes")
    parser.add_argument("--slots", type=int, default=8, help="prefixes each replica's cache holds")
    parser.add_argument("--prefix-ms", type=float, default=150, help="prefill of a prefix not cached")
    parser.add_argument("--think-ms", type=float, default=20, help="the rest of a request's time")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    requests = workload(args)
    results = []
    with tempfile.TemporaryDirectory(prefix="catcache-routing-") as tmp:
        for replicas in args.replicas:
            results += run(args, replicas, requests, Path(tmp))
    output.show("Backend replicas: prefix affinity against round-robin",
                ["replicas", "routing", "prefix-cache hits", "p50 ms", "p95 ms", "p99 ms", "busiest replica"],
                [[r["replicas"], r["routing"], f"{r['prefix_hit_rate']:.1%}", r["latency_ms"]["p50"],
                  r["latency_ms"]["p95"], r["latency_ms"]["p99"], f"{r['busiest_share']:.0%}"] for r in results])
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    output.save("routing", {"settings": settings, "results": results}, args.out)


if __name__ == "__main__":
    main()
