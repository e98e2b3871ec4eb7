"""Memory bounded by configuration, not by what clients send (issue 21, finding 4).

A fresh `catcache serve` (its own embedded Redis, the shipped policy) in front of the test
backend; clients send large adversarial bodies one after another, every one of them new: code
blocks (half of them `Cache-Control: no-store`), prose, many-message chats and bodies that are
not JSON, half of them over the 1 MB that is parsed and cached (1-5 MB, 4 MB, 30,000 messages,
2 MB) and half under it (0.1-0.9 MB, 0.8 MB, 15,000 messages, 0.5 MB). Every `--sample-every` seconds it reads the proxy's RSS from
/proc. The baseline is the first sample after the warm-up (a tenth of the run); the figure is
the RSS at the end against it (the target: within 10%).

    python -m bench.memory [--seconds 1800] [--clients 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
from collections import Counter
from pathlib import Path

import httpx
import orjson

from bench import output, stack
from bench.soak import rss_mb


def adversarial(r: random.Random, i: int) -> tuple[str, bytes, dict[str, str]]:
    kind = r.choice(["code", "code-no-store", "prose", "messages", "not-json"])
    headers = {"content-type": "application/json", "authorization": f"Bearer sk-memory-{i % 7}"}
    large = r.random() < 0.5  # over the 1 MB that is parsed and cached, or under it
    if kind.startswith("code"):
        size = r.randint(1, 5) * 1024 * 1024 if large else r.randint(100, 900) * 1024
        line = f"function f{i}(a) {{ return a + {i}; }} // {r.random()}\n"
        body = {"model": "test-model", "messages": [{"role": "user", "content": "```js\n" + line * (size // len(line)) + "```"}]}
        if kind == "code-no-store":
            headers["cache-control"] = "no-store"
    elif kind == "prose":
        words = 1_000_000 if large else 200_000
        body = {"model": "test-model", "messages": [{"role": "user", "content": f"question {i} " + "why " * words}]}
    elif kind == "messages":
        count = 30_000 if large else 15_000
        body = {"model": "test-model", "messages": [{"role": "user", "content": f"m{i} {k}"} for k in range(count)]}
    else:
        return kind, r.randbytes(2 * 1024 * 1024 if large else 512 * 1024), headers
    return f"{kind} {'over' if large else 'under'} 1 MB", orjson.dumps(body), headers


async def client(url: str, seed: int, until: float, outcomes: Counter[str]) -> None:
    r = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        i = seed * 1_000_000
        while time.monotonic() < until:
            kind, body, headers = adversarial(r, i)
            try:
                response = await http.post("/v1/chat/completions", content=body, headers=headers)
                outcomes[f"{kind} {response.status_code} {response.headers.get('x-catcache')}"] += 1
            except httpx.HTTPError as exc:
                outcomes[f"{kind} {type(exc).__name__}"] += 1
            i += 1


async def sample(pid: int, until: float, every: float, samples: list[tuple[float, float]]) -> None:
    started = time.monotonic()
    while time.monotonic() < until:
        samples.append((round(time.monotonic() - started, 1), rss_mb(pid)))
        await asyncio.sleep(every)
    samples.append((round(time.monotonic() - started, 1), rss_mb(pid)))


async def run(url: str, pid: int, seconds: float, clients: int, every: float) -> dict:
    until = time.monotonic() + seconds
    outcomes: Counter[str] = Counter()
    samples: list[tuple[float, float]] = []
    await asyncio.gather(sample(pid, until, every, samples), *(client(url, s, until, outcomes) for s in range(clients)))
    warm = next(rss for t, rss in samples if t >= seconds / 10)
    end = samples[-1][1]
    return {"rss_after_warm_up_mb": warm, "rss_end_mb": end, "rss_max_mb": max(rss for _, rss in samples),
            "change_pct": round((end - warm) / warm * 100, 1), "requests": sum(outcomes.values()),
            "outcomes": dict(outcomes), "samples": samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1800)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--sample-every", type=float, default=10)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    load_before = os.getloadavg()
    with stack.backend(0, 0) as backend_url, stack.proxy(backend_url) as proxy:
        result = asyncio.run(run(proxy.base_url.removesuffix("/v1"), proxy.process.pid, args.seconds, args.clients,
                                 args.sample_every))
    result |= {"seconds": args.seconds, "clients": args.clients, "load_average_before": load_before,
               "load_average_after": os.getloadavg()}
    output.show(f"memory under large adversarial bodies, {args.seconds:.0f} s, load {load_before[0]:.1f} -> "
                f"{os.getloadavg()[0]:.1f}", ["figure", "value"],
                [("requests", result["requests"]), ("RSS after warm-up MB", result["rss_after_warm_up_mb"]),
                 ("RSS at the end MB", result["rss_end_mb"]), ("RSS max MB", result["rss_max_mb"]),
                 ("change", f"{result['change_pct']}%")])
    output.save("memory", result, args.out)


if __name__ == "__main__":
    main()
