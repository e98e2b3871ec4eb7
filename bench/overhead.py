"""What catcache itself costs: latency added to a miss, hit latency, and hits per second.

    python -m bench.overhead [--queries 300] [--think-ms 0 --tokens-per-s 0] [--baseline DIR]

One run, through the OpenAI SDK, in front of two backends in their own process: the uvicorn test
backend and a plain `http.server` one (`catcache.testing.plain_backend`: no TCP_NODELAY, response head and
body written apart, as many small servers do). With `--baseline DIR`, a second catcache run from
the source folder DIR (an older checkout) stands beside this one in every round:
- miss: each round sends one new query straight to the backend and another new query through
  each proxy (embedding, both tiers, the backend call, the store), in turn, so all sides see
  the same machine load; the added latency is proxy minus direct at each percentile, the ratio
  proxy / direct. The backend answers at once by default, so the difference is all catcache's.
- no-store: a new query with `Cache-Control: no-store`, the proxy's bare pass-through.
- exact hit: the same queries again; semantic hit: each query in lower case (MiniLM is uncased,
  so the neighbour is found at similarity 1.0, but the exact tier misses).
- throughput: exact and semantic hits on the warmed cache at concurrency 1, 8 and 32, the sides
  taking turns point by point, with the CPU time the proxy process (all threads) and the
  benchmark's own client spent per request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import time
from pathlib import Path

from openai import AsyncOpenAI

from bench import output, replay, stack

WORDS = ("amber basil cobalt dune ember fjord garnet harbor indigo juniper kelp lumen maple nimbus orchid pylon "
         "quartz raven saffron tundra umber vortex willow xenon yarrow zephyr anchor beacon cinder delta").split()
CONCURRENCY = (1, 8, 32)
NO_STORE = {"cache-control": "no-store"}


def probes(n: int, seed: int = 7) -> list[str]:
    """Distinct queries that neither tier can answer from each other."""
    rng = random.Random(seed)
    return [f"Question {i}: what links {' and '.join(rng.sample(WORDS, 4))}?" for i in range(n)]


async def hits_per_second(client: AsyncOpenAI, texts: list[str], concurrency: int, total: int,
                          pid: int | None = None) -> dict:
    """Send `total` requests cycling over `texts`, `concurrency` at a time. With the proxy's `pid`,
    also the CPU time it spent per request, all threads (the model's too): on a machine the client
    shares, hits per second are the machine's, and this is what the proxy itself costs."""
    queue = iter(range(total))
    outcomes: list[str] = []

    async def worker() -> None:
        for i in queue:
            outcomes.append((await replay.ask(client, texts[i % len(texts)])).outcome)

    cpu_before, client_before = cpu_seconds(pid), time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    hits = sum(o in replay.HITS for o in outcomes)
    point = {"concurrency": concurrency, "requests": total, "hits": hits, "hits_per_s": round(hits / elapsed, 1),
             "client_cpu_ms_per_request": round((time.process_time() - client_before) / total * 1000, 3)}
    if pid is not None:
        point["proxy_cpu_ms_per_request"] = round((cpu_seconds(pid) - cpu_before) / total * 1000, 3)
    return point


def cpu_seconds(pid: int | None) -> float:
    """User and system CPU time of process `pid` so far (Linux /proc), 0 when unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, TypeError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(backend_url: str, proxy_url: str, n: int, total: int, baseline_url: str | None = None,
                  throughput: bool = True, pids: dict[str, int] | None = None) -> dict:
    """The figures for the proxy at `proxy_url` and, when given, a baseline proxy in front of the same
    backend; each round asks the backend direct, then each proxy, so all see the same machine load."""
    texts = probes(3 * n)
    sides = {"catcache": proxy_url, **({"baseline": baseline_url} if baseline_url else {})}
    async with contextlib.AsyncExitStack() as stack_:
        direct = await stack_.enter_async_context(AsyncOpenAI(base_url=backend_url, api_key="bench", max_retries=0))
        clients = {side: await stack_.enter_async_context(AsyncOpenAI(base_url=url, api_key="bench", max_retries=0))
                   for side, url in sides.items()}
        for warm in probes(5, seed=99):  # model, connections and code paths warm
            await replay.ask(direct, warm)
            for client in clients.values():
                await replay.ask(client, warm)
                await replay.ask(client.with_options(default_headers=NO_STORE), warm)
        backend_ms: list[float] = []
        miss: dict[str, list[replay.Answer]] = {side: [] for side in sides}
        no_store: dict[str, list[replay.Answer]] = {side: [] for side in sides}
        for i in range(n):
            backend_ms.append((await replay.ask(direct, texts[i])).latency_ms)
            for side, client in clients.items():
                miss[side].append(await replay.ask(client, texts[n + i]))
                no_store[side].append(await replay.ask(client.with_options(default_headers=NO_STORE), texts[2 * n + i]))
        proxied = texts[n:2 * n]
        exact = {side: [] for side in sides}
        semantic = {side: [] for side in sides}
        for text in proxied:
            for side, client in clients.items():
                exact[side].append(await replay.ask(client, text))
                semantic[side].append(await replay.ask(client, text.lower()))
        speeds = await _throughput(clients, proxied, total, pids or {}) if throughput else {}
    direct_p = output.percentiles(backend_ms, (50, 99))
    return {"direct_ms": direct_p, **{side: {
        "miss": _added(direct_p, miss[side]),
        "no_store": _added(direct_p, no_store[side]),
        "exact_hit": _hits(exact[side], "hit-exact"),
        "semantic_hit": _hits(semantic[side], "hit-semantic"),
        "throughput": speeds.get(side),
    } for side in sides}}


async def _throughput(clients: dict[str, AsyncOpenAI], texts: list[str], total: int, pids: dict[str, int]) -> dict:
    """Hits per second of each side at each concurrency and tier, the sides taking turns point by
    point, so a change in the machine's load falls on both alike."""
    speeds: dict[str, dict[str, list[dict]]] = {side: {"exact": [], "semantic": []} for side in clients}
    for concurrency in CONCURRENCY:
        for tier, asked in (("exact", texts), ("semantic", [t.lower() for t in texts])):
            for side, client in clients.items():
                speeds[side][tier].append(await hits_per_second(client, asked, concurrency, total, pids.get(side)))
    return speeds


def _added(direct_p: dict, answers: list[replay.Answer]) -> dict:
    """Latency through the proxy, and what it adds to the direct call, at each percentile."""
    proxy_p = output.percentiles([a.latency_ms for a in answers], (50, 99))
    return {"proxy_ms": proxy_p, "added_ms": {p: round(proxy_p[p] - direct_p[p], 3) for p in direct_p},
            "ratio": {p: round(proxy_p[p] / direct_p[p], 3) for p in direct_p},
            "outcomes": {o: [a.outcome for a in answers].count(o) for o in {a.outcome for a in answers}}}


def _hits(answers: list[replay.Answer], outcome: str) -> dict:
    return {"ms": output.percentiles([a.latency_ms for a in answers if a.outcome == outcome], (50, 99)),
            "hits": sum(a.outcome == outcome for a in answers), "of": len(answers)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=300, help="misses (and hits) measured on each side")
    parser.add_argument("--requests", type=int, default=600, help="requests per throughput point")
    parser.add_argument("--think-ms", type=float, default=0)
    parser.add_argument("--tokens-per-s", type=float, default=0)
    parser.add_argument("--servers", default="uvicorn,plain",
                        help="backends to measure in front of: uvicorn (catcache.testing.backend), plain (catcache.testing.plain_backend); "
                             "hits per second are measured in front of the first only")
    parser.add_argument("--baseline", type=Path,
                        help="a catcache source folder (e.g. an older checkout) to run side by side as the baseline")
    parser.add_argument("--policies", type=Path, default=stack.DEFAULT_POLICIES)
    parser.add_argument("--baseline-policies", type=Path,
                        help="the baseline's policy file (default: --policies); with --baseline . it compares two "
                             "policies, e.g. the int8 embedder against the default, on the same code")
    parser.add_argument("--name", default="overhead")
    args = parser.parse_args()
    load_start = os.getloadavg()  # 1, 5, 15 minutes: the machine is shared
    results = {}
    for number, server in enumerate(args.servers.split(",")):
        with contextlib.ExitStack() as running:
            backend_url = running.enter_context(stack.backend(args.think_ms, args.tokens_per_s, server))
            proxy = running.enter_context(stack.proxy(backend_url, args.policies))
            baseline = running.enter_context(stack.proxy(backend_url, args.baseline_policies or args.policies,
                                                         source=args.baseline)) if args.baseline else None
            pids = {"catcache": proxy.process.pid, **({"baseline": baseline.process.pid} if baseline else {})}
            results[server] = asyncio.run(measure(backend_url, proxy.base_url, args.queries, args.requests,
                                                  baseline.base_url if baseline else None, throughput=number == 0,
                                                  pids=pids))
    for server, result in results.items():
        sides = [side for side in ("baseline", "catcache") if side in result]
        rows = [["backend direct", *[result["direct_ms"][p] for p in ("p50", "p99")] * len(sides)]]
        for label, pick in [("miss through the proxy", lambda r: r["miss"]["proxy_ms"]),
                            ("added to a miss", lambda r: r["miss"]["added_ms"]),
                            ("miss ratio (x)", lambda r: r["miss"]["ratio"]),
                            ("added, no-store pass-through", lambda r: r["no_store"]["added_ms"]),
                            ("exact hit", lambda r: r["exact_hit"]["ms"]),
                            ("semantic hit", lambda r: r["semantic_hit"]["ms"])]:
            rows.append([label, *(pick(result[side])[p] for side in sides for p in ("p50", "p99"))])
        output.show(f"overhead in front of the {server} backend (ms)",
                    ["measure", *(f"{side} {p}" for side in sides for p in ("p50", "p99"))], rows)
        speeds = [(side, tier, points) for side in sides if result[side]["throughput"]
                  for tier, points in result[side]["throughput"].items()]
        if speeds:
            output.show(f"hits per second on a warmed cache ({server} backend)",
                        ["proxy", "tier", *(f"c={c}" for c in CONCURRENCY)],
                        [[side, tier, *(p["hits_per_s"] for p in points)] for side, tier, points in speeds])
            output.show(f"CPU ms per request: the proxy (all its threads) / the benchmark's client ({server} backend)",
                        ["proxy", "tier", *(f"c={c}" for c in CONCURRENCY)],
                        [[side, tier, *(f"{p.get('proxy_cpu_ms_per_request')} / {p['client_cpu_ms_per_request']}"
                                        for p in points)] for side, tier, points in speeds])
    output.save(args.name, {"queries": args.queries, "load_average": {"start": load_start, "end": os.getloadavg()}, "backend": {"think_ms": args.think_ms,
                                                                 "tokens_per_s": args.tokens_per_s},
                            "baseline": str(args.baseline) if args.baseline else None,
                            "policies": str(args.policies),
                            "baseline_policies": str(args.baseline_policies or args.policies), "servers": results})


if __name__ == "__main__":
    main()
