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
import itertools
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

from bench import output, stack
from bench.overhead import probes
from catcache.store.embedded import EmbeddedRedis
from tests.util import ProxyProcess

POLL_S = 0.02


async def store(http: httpx.AsyncClient, base_url: str, text: str) -> str:
    """Send `text` as a new question; the answer it was given (and stored)."""
    response = await http.post(f"{base_url}/chat/completions",
                               json={"model": "test-model", "messages": [{"role": "user", "content": text}]})
    response.raise_for_status()
    assert response.headers["x-catcache"] == "miss", response.headers["x-catcache"]
    return response.json()["choices"][0]["message"]["content"]


async def is_hit(http: httpx.AsyncClient, base_url: str, text: str) -> bool:
    """One lookup of `text` that stores nothing if it misses."""
    body = {"model": "test-model", "stream": True, "messages": [{"role": "user", "content": text}]}
    async with http.stream("POST", f"{base_url}/chat/completions", json=body,
                           headers={"x-test-truncate": "1"}) as response:
        return response.headers.get("x-catcache", "").startswith("hit")


async def seconds_until_hit(http: httpx.AsyncClient, base_url: str, text: str, deadline_s: float) -> float | None:
    """Seconds from now until `base_url` serves `text` from the cache; None past `deadline_s`."""
    started = time.perf_counter()
    while time.perf_counter() - started < deadline_s:
        if await is_hit(http, base_url, text):
            return time.perf_counter() - started
        await asyncio.sleep(POLL_S)
    return None


async def propagation(urls: list[str], texts: list[str], deadline_s: float, api_key: str) -> list[float | None]:
    """For each text: store it through one proxy (in turn), then the delay until every other serves it."""
    delays: list[float | None] = []
    async with httpx.AsyncClient(timeout=30, headers={"authorization": f"Bearer {api_key}"}) as http:
        for n, text in enumerate(texts):
            origin = urls[n % len(urls)]
            await store(http, origin, text)
            others = [url for url in urls if url != origin]
            found = await asyncio.gather(*(seconds_until_hit(http, url, text.lower(), deadline_s) for url in others))
            delays.extend(found)
    return delays


async def load(urls: list[str], concurrency: int, stop: asyncio.Event) -> int:
    """New questions to every proxy in turn until `stop`; the number sent."""
    sent = itertools.count()
    async with httpx.AsyncClient(timeout=30, headers={"authorization": "Bearer sk-load"}) as http:
        async def worker(offset: int) -> None:
            for n in itertools.count(offset, concurrency):
                if stop.is_set():
                    return
                body = {"model": "test-model",
                        "messages": [{"role": "user", "content": f"Load question {n} {time.time_ns()}?"}]}
                await http.post(f"{urls[n % len(urls)]}/chat/completions", json=body)
                next(sent)

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return next(sent)


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
