"""Several proxies, one cache: how long an entry stored through one proxy takes to be a semantic
hit on the others, under load.

    python -m bench.propagation [--proxies 3] [--probes 60] [--load-concurrency 4]

`--proxies` catcache processes share one Redis (embedded, started here) in front of one test
backend. Background clients keep every proxy busy with new questions (misses, so stores and
events), while a probe stores a new question through proxy i and then polls every other proxy
with the question in lower case (an exact miss, a semantic hit at similarity 1.0 once that proxy's
index has the entry) until it is served from the cache. A poll that misses must not store its own
answer, or the next poll would hit that instead: polls are streams with `x-test-truncate: 1`,
which the test backend cuts short, and catcache never stores a truncated stream.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from bench import output, stack
from bench.overhead import probes
from catcache.store.embedded import EmbeddedRedis
from catcache.testing.proxy import ProxyProcess
from catcache.testing.traffic import load, propagation


async def measure(urls: list[str], texts: list[str], concurrency: int) -> tuple[list[float | None], float]:
    stop = asyncio.Event()
    loaders = asyncio.create_task(load(urls, concurrency, stop))
    started = time.perf_counter()
    delays = await propagation(urls, texts, deadline_s=10.0, api_key="sk-probe")
    stop.set()
    sent = await loaders
    return delays, sent / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proxies", type=int, default=3)
    parser.add_argument("--probes", type=int, default=60)
    parser.add_argument("--load-concurrency", type=int, default=4)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    texts = [text.replace("Question", "Probe") for text in probes(args.probes, seed=31)]
    with tempfile.TemporaryDirectory(prefix="catcache-propagation-") as tmp, ExitStack() as running:
        redis = running.enter_context(EmbeddedRedis(Path(tmp) / "redis"))
        backend_url = running.enter_context(stack.backend(0, 0))
        proxies = [ProxyProcess(backend_url, stack.DEFAULT_POLICIES, Path(tmp) / f"proxy-{i}", redis_url=redis.url)
                   for i in range(args.proxies)]
        for proxy in proxies:
            running.callback(proxy.stop)
            proxy.start(timeout=180)
        delays, load_rps = asyncio.run(measure([p.base_url for p in proxies], texts, args.load_concurrency))
    seen = [d * 1000 for d in delays if d is not None]
    result = {"proxies": args.proxies, "probes": args.probes, "lookups": len(delays),
              "never_served": sum(d is None for d in delays), "load_requests_per_s": round(load_rps, 1),
              "delay_ms": output.percentiles(seen), "max_ms": round(max(seen), 1) if seen else None}
    output.show("Several proxies, one cache: store on one, semantic hit on the others",
                ["proxies", "lookups", "never served", "load req/s", "p50 ms", "p95 ms", "p99 ms", "max ms"],
                [[args.proxies, len(delays), result["never_served"], result["load_requests_per_s"],
                  *result["delay_ms"].values(), result["max_ms"]]])
    output.save("propagation", {"settings": vars(args) | {"out": None}, **result}, args.out)


if __name__ == "__main__":
    main()
