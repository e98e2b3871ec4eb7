"""Does one large request stall the proxy for everyone? (issue 21, finding 3)

catcache runs in this process under uvicorn (catcache's HTTP protocol, as `catcache serve`) in
front of the test backend (its own process). A heartbeat on the proxy's event loop wakes every
5 ms and records how late it woke: the longest lateness is the longest the loop was blocked.
One client asks a cached question over and over (exact hits, one at a time); in the second
half of the run a second client sends large requests one after another: an 8 MB JavaScript code
block, 100,001 one-word messages (6.3 MB), 8 MB of prose (all three over the 1 MB that is
cached, so they pass through unparsed), and 25,000 messages in 0.9 MB (cached, so parsed and put
in canonical form, in a worker thread). Side by side, in one run: the hit's
latency and the loop's longest stall without and with the large requests, and how often the
Redis health guard marked Redis down (it never should: Redis is fine).

    python -m bench.loop_block [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import orjson

from bench import output, stack
from catcache.proxy.app import Settings, create_app
from catcache.store.embedded import EmbeddedRedis
from catcache.testing.fuzz import fuzzing_target

LIMIT = 16 * 1024 * 1024
QUESTION = {"model": "test-model", "messages": [{"role": "user", "content": "What is the capital of France?"}]}


def large_bodies() -> list[tuple[str, bytes]]:
    js = "```javascript\n" + "function add(a, b) {\n  // sum\n  return a + b;\n}\n" * 170_000 + "```\nWhat does it do?"
    return [
        ("8 MB JavaScript block", orjson.dumps({"model": "test-model", "messages": [{"role": "user", "content": js}]})),
        ("100,001 messages", orjson.dumps({"model": "test-model", "messages": [{"role": "user", "content": "hi"}] * 100_001})),
        ("8 MB prose", orjson.dumps({"model": "test-model", "messages": [{"role": "user", "content": "why " * 2_000_000}]})),
        ("25,000 messages (0.9 MB: cached)", orjson.dumps({"model": "test-model", "messages": [
            {"role": "user", "content": f"hi {i}"} for i in range(25_000)]})),
    ]


class Heartbeat:
    """Wakes every 5 ms on the proxy's loop; `stalls` are how late each wake-up came, in ms."""

    def __init__(self) -> None:
        self.stalls: list[tuple[float, float]] = []  # (when, lateness ms)

    async def run(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(0.005)
            self.stalls.append((started, (time.perf_counter() - started - 0.005) * 1000))

    def worst(self, since: float, until: float) -> float:
        return max((lag for when, lag in self.stalls if since <= when < until), default=0.0)


async def hits(http: httpx.AsyncClient, until: float, latencies: list[float], outcomes: Counter[str]) -> None:
    """The cached question again and again; `outcomes` counts how each was answered (all hit-exact
    unless the guard took Redis for down and passed requests through)."""
    while time.perf_counter() < until:
        started = time.perf_counter()
        response = await http.post("/v1/chat/completions", content=orjson.dumps(QUESTION),
                                   headers={"content-type": "application/json", "authorization": "Bearer sk-hits"})
        outcomes[f"{response.status_code} {response.headers.get('x-catcache')}"] += 1
        latencies.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(0.01)


async def large(http: httpx.AsyncClient, until: float, bodies: list[tuple[str, bytes]], done: list[dict]) -> None:
    i = 0
    while time.perf_counter() < until:
        name, body = bodies[i % len(bodies)]
        started = time.perf_counter()
        response = await http.post("/v1/chat/completions", content=body, headers={
            "content-type": "application/json", "authorization": f"Bearer sk-large-{i}"})
        done.append({"request": name, "status": response.status_code, "seconds": round(time.perf_counter() - started, 2),
                     "outcome": response.headers.get("x-catcache")})
        i += 1


async def measure(url: str, seconds: float, heartbeat: Heartbeat, guard_downs: list[float]) -> dict:
    bodies = large_bodies()
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        await http.post("/v1/chat/completions", json=QUESTION, headers={"authorization": "Bearer sk-hits"})  # stored
        quiet: list[float] = []
        loaded: list[float] = []
        quiet_outcomes: Counter[str] = Counter()
        loaded_outcomes: Counter[str] = Counter()
        large_done: list[dict] = []
        start = time.perf_counter()
        half = start + seconds / 2
        await hits(http, half, quiet, quiet_outcomes)
        await asyncio.gather(hits(http, half + seconds / 2, loaded, loaded_outcomes), large(http, half + seconds / 2, bodies, large_done))
        end = time.perf_counter()
    return {
        "quiet": {"hits": len(quiet), "outcomes": dict(quiet_outcomes), "hit_ms": output.percentiles(quiet), "hit_max_ms": round(max(quiet), 1),
                  "longest_loop_stall_ms": round(heartbeat.worst(start, half), 1),
                  "redis_marked_down": sum(1 for t in guard_downs if start <= t < half)},
        "large_requests": {"hits": len(loaded), "outcomes": dict(loaded_outcomes), "hit_ms": output.percentiles(loaded), "hit_max_ms": round(max(loaded), 1),
                           "longest_loop_stall_ms": round(heartbeat.worst(half, end), 1),
                           "redis_marked_down": sum(1 for t in guard_downs if half <= t < end),
                           "large": large_done},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    heartbeat, guard_downs = Heartbeat(), []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as scratch, stack.backend(0, 0) as backend_url, EmbeddedRedis(Path(scratch)) as redis:
        app = create_app(Settings(backend=backend_url, policies=stack.DEFAULT_POLICIES, redis_url=redis.url, max_body_bytes=LIMIT))
        with fuzzing_target(app, client_timeout=60) as served:
            loop = served.server_loop()
            guard = app.state.proxy.guard
            mark_down = guard.mark_down
            guard.mark_down = lambda reason: (guard_downs.append(time.perf_counter()), mark_down(reason))[1]
            beating = asyncio.run_coroutine_threadsafe(heartbeat.run(), loop)
            result = asyncio.run(measure(served.url, args.seconds, heartbeat, guard_downs))
            beating.cancel()
    result |= {"seconds": args.seconds, "load_average_before": load_before, "load_average_after": os.getloadavg()}
    rows = [(phase, r["hits"], r["outcomes"].get("200 hit-exact", 0), r["hit_ms"]["p50"], r["hit_ms"]["p99"], r["hit_max_ms"], r["longest_loop_stall_ms"],
             r["redis_marked_down"]) for phase, r in (("quiet", result["quiet"]), ("with large requests", result["large_requests"]))]
    output.show(f"loop block, load average {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}",
                ["phase", "requests", "served hit-exact", "p50 ms", "p99 ms", "max ms", "longest loop stall ms", "Redis marked down"], rows)
    output.show("large requests", ["request", "status", "seconds", "outcome"],
                [(r["request"], r["status"], r["seconds"], r["outcome"]) for r in result["large_requests"]["large"]])
    output.save("loop_block", result, args.out)


if __name__ == "__main__":
    main()
