"""What catcache itself costs: latency added to a miss, hit latency, and hits per second.

    python -m bench.overhead [--queries 300] [--think-ms 0 --tokens-per-s 0] [--baseline DIR]
        [--speculate auto,always] [--load-requests 150]

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
- inside: per outcome, the mean time the proxy itself counted (its request-duration histogram in
  `/metrics`, from the parsed request to the answer) over the rounds above: what is left of a
  latency is HTTP and the client.
- with `--speculate auto,always`, a side more for each mode: this code with every category
  speculating (proxy/speculation.py); the embedder's own forward pass on each paraphrase is timed in this
  process beside the rounds, so a semantic hit can be set against it.
- with `--load-requests N`: under load, in front of a backend that takes `--load-think-ms`, N
  requests per side and round at `--load-concurrency`, `--load-hit-rate` of them paraphrases of
  cached questions; hits' and misses' latencies, and the backend calls a hit closed (speculating
  sides, one per `--load-bounds` value of `speculation.max_in_flight`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import tempfile
import time
from pathlib import Path

import httpx
import yaml
from openai import AsyncOpenAI

from bench import output, replay, stack
from catcache.index.embedder import Embedder
from catcache.testing.proxy import ProxyProcess

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


async def measure(backend_url: str, sides: dict[str, str], n: int, total: int, throughput: bool = True,
                  pids: dict[str, int] | None = None, embedder: Embedder | None = None) -> dict:
    """The figures for each proxy of `sides` (name: base URL) in front of the same backend; each
    round asks the backend direct, then each proxy, so all see the same machine load. With
    `embedder`, each semantic round also times its forward pass on the query, in this process."""
    texts = probes(3 * n)
    async with contextlib.AsyncExitStack() as stack_:
        direct = await stack_.enter_async_context(AsyncOpenAI(base_url=backend_url, api_key="bench", max_retries=0))
        clients = {side: await stack_.enter_async_context(AsyncOpenAI(base_url=url, api_key="bench", max_retries=0))
                   for side, url in sides.items()}
        for warm in probes(5, seed=99):  # model, connections and code paths warm
            await replay.ask(direct, warm)
            for client in clients.values():
                await replay.ask(client, warm)
                await replay.ask(client.with_options(default_headers=NO_STORE), warm)
        before = {side: await durations(url) for side, url in sides.items()}
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
        forward_ms: list[float] = []
        for text in proxied:
            if embedder is not None:
                started = time.perf_counter()
                embedder.encode([text.lower()])
                forward_ms.append((time.perf_counter() - started) * 1000)
            for side, client in clients.items():
                exact[side].append(await replay.ask(client, text))
                semantic[side].append(await replay.ask(client, text.lower()))
        inside = {side: _inside(before[side], await durations(url)) for side, url in sides.items()}
        speeds = await _throughput(clients, proxied, total, pids or {}) if throughput else {}
    direct_p = output.percentiles(backend_ms, (50, 99))
    return {"direct_ms": direct_p, "forward_pass_ms": output.percentiles(forward_ms, (50, 99)), **{side: {
        "miss": _added(direct_p, miss[side]),
        "no_store": _added(direct_p, no_store[side]),
        "exact_hit": _hits(exact[side], "hit-exact"),
        "semantic_hit": _hits(semantic[side], "hit-semantic"),
        "paraphrase": _added(direct_p, semantic[side]),
        "inside_ms": inside[side],
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


def speculating(policies: Path, mode: str, bound: int | None, folder: Path) -> Path:
    """A copy of `policies` with every category's `speculate` set to `mode` (and the bound, if given)."""
    policy = yaml.safe_load(policies.read_text())
    for category in policy["categories"].values():
        category["speculate"] = mode
    if bound is not None:
        policy["speculation"] = {"max_in_flight": bound}
    path = folder / f"speculate-{mode}-{bound}.yaml"
    path.write_text(yaml.safe_dump(policy))
    return path


async def under_load(backend_url: str, sides: dict[str, str], requests: int, concurrency: int, hit_rate: float,
                     rounds: int) -> dict:
    """Each side in turn, `rounds` times, on the same texts: first the questions that will be hit are
    cached, then `requests` chat requests go `concurrency` at a time, a share `hit_rate` of them
    paraphrases of those (semantic hits), the rest new questions (misses). Counted per side: the
    latencies of hits and misses, the backend's calls beyond the misses (speculative calls a hit
    closed) and the proxy's own count of those calls and their prompt tokens."""
    hits_per_round = round(requests * hit_rate)
    texts = probes(rounds * (requests + hits_per_round), seed=23)
    answers: dict[str, list[replay.Answer]] = {side: [] for side in sides}
    extra_calls = {side: 0 for side in sides}
    counted = {side: dict.fromkeys(("sent", "cancelled", "cancelled_prompt_tokens"), 0.0) for side in sides}
    async with contextlib.AsyncExitStack() as stack_:
        clients = {side: await stack_.enter_async_context(AsyncOpenAI(base_url=url, api_key="bench", max_retries=0))
                   for side, url in sides.items()}
        for number in range(rounds):
            block = texts[number * requests:(number + 1) * requests]
            cached, new = block[:hits_per_round], block[hits_per_round:]
            mixed = [text.lower() for text in cached] + new
            random.Random(number).shuffle(mixed)
            for side, client in clients.items():
                await _concurrently(client, cached, concurrency)
                await asyncio.sleep(1.0)  # the seeded answers are stored in the background
                calls, before = await backend_calls(backend_url), await speculation_counts(sides[side])
                asked = await _concurrently(client, mixed, concurrency)
                await asyncio.sleep(0.5)  # closed calls are counted as they close
                to_backend = sum(a.outcome not in replay.HITS for a in asked)
                extra_calls[side] += await backend_calls(backend_url) - calls - to_backend
                after = await speculation_counts(sides[side])
                for event in after:
                    counted[side][event] += after[event] - before[event]
                answers[side] += asked
    result = {}
    for side in sides:
        asked = answers[side]
        result[side] = {
            "hits_ms": output.percentiles([a.latency_ms for a in asked if a.outcome in replay.HITS], (50, 99)),
            "misses_ms": output.percentiles([a.latency_ms for a in asked if a.outcome not in replay.HITS], (50, 99)),
            "outcomes": {o: [a.outcome for a in asked].count(o) for o in {a.outcome for a in asked}},
            "backend_calls_beyond_misses": extra_calls[side],
            **counted[side],
        }
    return result


async def _concurrently(client: AsyncOpenAI, texts: list[str], concurrency: int) -> list[replay.Answer]:
    queue = iter(texts)
    answers: list[replay.Answer] = []

    async def worker() -> None:
        for text in queue:
            answers.append(await replay.ask(client, text))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return answers


async def durations(proxy_url: str) -> dict[str, tuple[float, float]]:
    """Per outcome, the seconds and the count of the proxy's own request-duration histogram: from
    its parsed request to its answer, without the HTTP on either side or the client."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(proxy_url.removesuffix("/v1") + "/metrics")).text
    sums = dict(re.findall(r'catcache_request_duration_seconds_sum{outcome="([\w-]+)"} (\S+)', text))
    counts = dict(re.findall(r'catcache_request_duration_seconds_count{outcome="([\w-]+)"} (\S+)', text))
    return {outcome: (float(sums[outcome]), float(counts[outcome])) for outcome in sums}


def _inside(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Mean ms inside the proxy per outcome, over the requests between two `durations`."""
    means = {}
    for outcome, (seconds, count) in after.items():
        was_seconds, was_count = before.get(outcome, (0.0, 0.0))
        if count > was_count:
            means[outcome] = round((seconds - was_seconds) / (count - was_count) * 1000, 3)
    return means


async def backend_calls(backend_url: str) -> int:
    """Chat calls the test backend has answered so far (its GET /stats)."""
    async with httpx.AsyncClient() as http:
        calls = (await http.get(backend_url.removesuffix("/v1") + "/stats")).json()
    return sum(n for path, n in calls.items() if path.endswith("/chat/completions"))


async def speculation_counts(proxy_url: str) -> dict[str, float]:
    """The proxy's speculation counters from /metrics, summed over categories (0 for a proxy without them)."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(proxy_url.removesuffix("/v1") + "/metrics")).text
    counts = dict.fromkeys(("sent", "cancelled", "cancelled_prompt_tokens"), 0.0)
    for event, value in re.findall(r'catcache_speculation_total{category="[^"]*",event="(\w+)"} (\S+)', text):
        counts[event] += float(value)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=300, help="misses (and hits) measured on each side")
    parser.add_argument("--requests", type=int, default=600, help="requests per throughput point; 0: none")
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
    parser.add_argument("--speculate", default="",
                        help="comma-separated modes (auto, always): a side from this code for each, with every "
                             "category's `speculate` set to it")
    parser.add_argument("--load-requests", type=int, default=0,
                        help="under load: requests per side and round (0: no load phase)")
    parser.add_argument("--load-rounds", type=int, default=2)
    parser.add_argument("--load-concurrency", type=int, default=32)
    parser.add_argument("--load-think-ms", type=float, default=200)
    parser.add_argument("--load-hit-rate", type=float, default=0.3)
    parser.add_argument("--load-bounds", default="8,64",
                        help="speculation.max_in_flight of the speculating sides under load, one side each")
    parser.add_argument("--name", default="overhead")
    args = parser.parse_args()
    load_start = os.getloadavg()  # 1, 5, 15 minutes: the machine is shared
    results = {}
    embedder = Embedder(yaml.safe_load(args.policies.read_text()).get("embedding_model") or "all-MiniLM-L6-v2")
    with tempfile.TemporaryDirectory(prefix="overhead-") as folder:
        for number, server in enumerate(s for s in args.servers.split(",") if s):
            with contextlib.ExitStack() as running:
                backend_url = running.enter_context(stack.backend(args.think_ms, args.tokens_per_s, server))
                proxies = _sides(running, backend_url, args, Path(folder), [None])
                results[server] = asyncio.run(measure(
                    backend_url, {side: p.base_url for side, p in proxies.items()}, args.queries, args.requests,
                    throughput=number == 0 and args.requests > 0,
                    pids={side: p.process.pid for side, p in proxies.items()}, embedder=embedder))
        load = None
        if args.load_requests:
            with contextlib.ExitStack() as running:
                backend_url = running.enter_context(stack.backend(args.load_think_ms, 0, "uvicorn"))
                proxies = _sides(running, backend_url, args, Path(folder),
                                 [int(b) for b in args.load_bounds.split(",")])
                load = asyncio.run(under_load(backend_url, {side: p.base_url for side, p in proxies.items()},
                                              args.load_requests, args.load_concurrency, args.load_hit_rate,
                                              args.load_rounds))
    load_end = os.getloadavg()
    for server, result in results.items():
        _show(server, result)
    if load:
        output.show(f"under load: concurrency {args.load_concurrency}, backend {args.load_think_ms:g} ms, "
                    f"{args.load_hit_rate:.0%} paraphrases of cached questions (ms)",
                    ["side", "hits p50", "hits p99", "misses p50", "misses p99", "outcomes", "speculated",
                     "closed by a hit", "their prompt tokens", "backend calls beyond misses"],
                    [[side, r["hits_ms"]["p50"], r["hits_ms"]["p99"], r["misses_ms"]["p50"], r["misses_ms"]["p99"],
                      str(r["outcomes"]), r["sent"], r["cancelled"], r["cancelled_prompt_tokens"],
                      r["backend_calls_beyond_misses"]] for side, r in load.items()])
    print(f"load average (1, 5, 15 min): start {load_start}, end {load_end}")
    output.save(args.name, {"queries": args.queries, "load_average": {"start": load_start, "end": load_end},
                            "backend": {"think_ms": args.think_ms, "tokens_per_s": args.tokens_per_s},
                            "baseline": str(args.baseline) if args.baseline else None,
                            "policies": str(args.policies), "speculate": args.speculate,
                            "baseline_policies": str(args.baseline_policies or args.policies), "servers": results,
                            "under_load": load and {"concurrency": args.load_concurrency,
                                                    "think_ms": args.load_think_ms, "hit_rate": args.load_hit_rate,
                                                    "requests_per_side": args.load_requests * args.load_rounds,
                                                    "sides": load}})


def _sides(running: contextlib.ExitStack, backend_url: str, args: argparse.Namespace, folder: Path,
           bounds: list[int | None]) -> dict[str, ProxyProcess]:
    """The proxies to compare, in front of `backend_url`: the baseline (if any), this code with the
    given policy, and this code speculating in each mode of `args.speculate` under each bound
    (None: the policy's own)."""
    sides = {}
    if args.baseline:
        sides["baseline"] = running.enter_context(stack.proxy(backend_url, args.baseline_policies or args.policies,
                                                              source=args.baseline))
    sides["catcache"] = running.enter_context(stack.proxy(backend_url, args.policies))
    for mode in filter(None, args.speculate.split(",")):
        for bound in bounds:
            name = f"speculate {mode}" + (f", max_in_flight {bound}" if bound is not None else "")
            sides[name] = running.enter_context(stack.proxy(
                backend_url, speculating(args.policies, mode, bound, folder)))
    return sides


def _show(server: str, result: dict) -> None:
    sides = [side for side in result if side not in ("direct_ms", "forward_pass_ms")]
    rows = [["backend direct", *[result["direct_ms"][p] for p in ("p50", "p99")] * len(sides)],
            ["embedder forward pass (in the bench)", *[result["forward_pass_ms"][p] for p in ("p50", "p99")] * len(sides)]]
    for label, pick in [("miss through the proxy", lambda r: r["miss"]["proxy_ms"]),
                        ("added to a miss", lambda r: r["miss"]["added_ms"]),
                        ("added, no-store pass-through", lambda r: r["no_store"]["added_ms"]),
                        ("exact hit", lambda r: r["exact_hit"]["ms"]),
                        ("semantic hit", lambda r: r["semantic_hit"]["ms"]),
                        ("paraphrase, whatever answered", lambda r: r["paraphrase"]["proxy_ms"])]:
        rows.append([label, *(pick(result[side])[p] for side in sides for p in ("p50", "p99"))])
    for outcome in ("miss", "bypass", "hit-exact", "hit-semantic"):
        rows.append([f"{outcome}: mean ms inside the proxy", *(result[side]["inside_ms"].get(outcome, "-")
                                                              for side in sides for _ in (0, 1))])
    rows.append(["paraphrases served as semantic hits", *(f"{result[side]['semantic_hit']['hits']}/"
                                                          f"{result[side]['semantic_hit']['of']}" for side in sides
                                                          for _ in (0, 1))])
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


if __name__ == "__main__":
    main()
