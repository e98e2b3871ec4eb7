"""Soak: many clients for a long time, and whether catcache stays healthy.

    python -m bench.soak [--clients 32] [--duration 600] [--sample-every 10]

A fresh stack (the test backend in its own process, `catcache serve` on its embedded Redis, the
shipped policy). Each client loops over a mix through the openai SDK: exact hits, semantic hits
(the lower-case form of a cached question), misses (new questions), streams, and streams the
client cancels after the first chunks. The backend is healthy, so every client error is
catcache's. Every `--sample-every` seconds it records the proxy's RSS and open file descriptors and
the embedded Redis's client connections; it reports RSS after the warm-up against the end
(target ±10%), and whether descriptors or connections grew.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import redis

from bench import output, stack

KINDS = (("exact", 0.35), ("semantic", 0.2), ("miss", 0.15), ("stream", 0.15), ("cancelled", 0.15))
WARM = [f"Soak question {i}: how does a {thing} work?" for i, thing in enumerate(
    "lighthouse violin glacier compass teapot volcano lantern harbor orchard comet bridge windmill canyon "
    "typewriter telescope cathedral bicycle meteor anchor quilt".split())]


@dataclass
class Sample:
    at_s: float
    requests: int
    rss_mb: float
    fds: int
    redis_clients: int
    indexed: int


@dataclass
class Run:
    sent: Counter = field(default_factory=Counter)      # kind -> requests
    outcomes: Counter = field(default_factory=Counter)  # x-catcache -> answers
    errors: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def one(api: openai.AsyncOpenAI, kind: str, rng: random.Random, run: Run) -> None:
    question = rng.choice(WARM)
    if kind == "semantic":
        question = question.lower()
    elif kind in ("miss", "cancelled"):
        question = f"Soak question {uuid.uuid4().hex}: what happens next?"
    messages = [{"role": "user", "content": question}]
    run.sent[kind] += 1
    try:
        if kind in ("stream", "cancelled"):
            raw = await api.chat.completions.with_raw_response.create(model="test-model", messages=messages,
                                                                     stream=True)
            chunks = raw.parse()
            seen = 0
            async for _ in chunks:
                seen += 1
                if kind == "cancelled" and seen >= 2:
                    break
            await chunks.close()
        else:
            raw = await api.chat.completions.with_raw_response.create(model="test-model", messages=messages)
            if not raw.parse().choices[0].message.content:
                raise ValueError("an empty answer")
        run.outcomes[raw.headers.get("x-catcache", "?")] += 1
    except (openai.OpenAIError, httpx.HTTPError, ValueError) as exc:
        run.errors.append(f"{kind}: {exc!r}"[:300])


async def clients(base_url: str, count: int, until: float, run: Run, mix: tuple = KINDS) -> None:
    async def client(number: int) -> None:
        rng = random.Random(number)
        api = openai.AsyncOpenAI(base_url=base_url, api_key=f"sk-soak-{number % 4}", max_retries=0, timeout=60)
        kinds, weights = zip(*mix)
        while time.monotonic() < until:
            await one(api, rng.choices(kinds, weights)[0], rng, run)
        await api.close()

    await asyncio.gather(*(client(i) for i in range(count)))


async def sampler(proxy_url: str, pid: int, redis_url: str, every: float, until: float, run: Run) -> None:
    started = time.monotonic()
    client = redis.asyncio.Redis.from_url(redis_url)
    async with httpx.AsyncClient() as http:
        while True:
            health = (await http.get(f"{proxy_url}/healthz", timeout=30)).json()
            info = await client.info("clients")
            run.samples.append(Sample(round(time.monotonic() - started, 1), sum(run.sent.values()), round(rss_mb(pid), 1),
                                      open_fds(pid), int(info["connected_clients"]) - 1,  # less this sampler
                                      sum(health["index"].values())))
            if time.monotonic() >= until:
                break
            await asyncio.sleep(min(every, max(0.0, until - time.monotonic())))
    await client.aclose()


def soak(clients_n: int, duration: float, every: float, warmup: float, think_ms: float, tokens_per_s: float,
         mix: tuple = KINDS) -> dict:
    with stack.backend(think_ms, tokens_per_s) as backend_url, stack.proxy(backend_url) as proxy:
        assert proxy.process is not None
        redis_url = (proxy.data_dir / "redis.url").read_text().strip()
        warm = openai.OpenAI(base_url=proxy.base_url, api_key="sk-soak-0", max_retries=0)
        for key in range(4):
            warm.api_key = f"sk-soak-{key}"
            for question in WARM:
                warm.chat.completions.create(model="test-model", messages=[{"role": "user", "content": question}])
        run = Run()

        async def main() -> None:
            until = time.monotonic() + duration
            await asyncio.gather(clients(proxy.base_url, clients_n, until, run, mix),
                                 sampler(proxy.url, proxy.process.pid, redis_url, every, until, run))

        asyncio.run(main())
    return summarise(run, duration, warmup)


def summarise(run: Run, duration: float, warmup: float) -> dict:
    samples = run.samples
    after = [s for s in samples if s.at_s >= warmup] or samples[-1:]
    first, last = after[0], samples[-1]
    return {
        "requests": sum(run.sent.values()), "requests_per_s": round(sum(run.sent.values()) / duration, 1),
        "sent": dict(run.sent), "outcomes": dict(run.outcomes),
        "errors": len(run.errors), "error_examples": run.errors[:10],
        "rss_mb_after_warmup": first.rss_mb, "rss_mb_end": last.rss_mb,
        "rss_change": round(last.rss_mb / first.rss_mb - 1, 4) if first.rss_mb else None,
        "fds_after_warmup": first.fds, "fds_end": last.fds, "fds_max": max(s.fds for s in samples),
        "redis_clients_after_warmup": first.redis_clients, "redis_clients_end": last.redis_clients,
        "redis_clients_max": max(s.redis_clients for s in samples),
        "indexed_after_warmup": first.indexed, "indexed_end": last.indexed,
        "samples": [vars(s) for s in samples],
    }


def mix_of(text: str) -> tuple[tuple[str, float], ...]:
    """`exact=50,semantic=30,stream=20` -> ((kind, weight), ...); hits only shows what new entries cost."""
    pairs = [part.split("=", 1) for part in text.split(",")]
    mix = tuple((kind.strip(), float(weight)) for kind, weight in pairs)
    if not mix or any(kind not in dict(KINDS) or weight < 0 for kind, weight in mix):
        raise ValueError(text)
    return mix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=600, help="seconds of load")
    parser.add_argument("--sample-every", type=float, default=10)
    parser.add_argument("--warmup", type=float, help="seconds before the RSS baseline (default: a tenth of the run)")
    parser.add_argument("--think-ms", type=float, default=20, help="the backend's delay before the first token")
    parser.add_argument("--tokens-per-s", type=float, default=200, help="the backend's token rate (streams last)")
    parser.add_argument("--mix", type=mix_of, default=KINDS,
                        help="kind=weight,...: exact, semantic, miss, stream, cancelled (default: "
                             + ",".join(f"{k}={int(w * 100)}" for k, w in KINDS) + ")")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    warmup = args.warmup if args.warmup is not None else args.duration / 10
    result = soak(args.clients, args.duration, args.sample_every, warmup, args.think_ms, args.tokens_per_s, args.mix)
    output.show(f"soak: {args.clients} clients for {args.duration:g} s", ["figure", "value"], [
        ["requests", result["requests"]], ["requests/s", result["requests_per_s"]],
        ["errors caused by catcache", result["errors"]],
        *[[f"  {name}", count] for name, count in sorted(result["outcomes"].items())],
        ["RSS after warm-up / end (MB)", f"{result['rss_mb_after_warmup']} / {result['rss_mb_end']}"],
        ["RSS change", f"{result['rss_change']:+.1%}" if result["rss_change"] is not None else "-"],
        ["open fds after warm-up / end / max", f"{result['fds_after_warmup']} / {result['fds_end']} / {result['fds_max']}"],
        ["redis clients after warm-up / end / max",
         f"{result['redis_clients_after_warmup']} / {result['redis_clients_end']} / {result['redis_clients_max']}"],
        ["indexed entries after warm-up / end", f"{result['indexed_after_warmup']} / {result['indexed_end']}"]])
    output.save("soak", {"clients": args.clients, "duration_s": args.duration, "warmup_s": warmup,
                         "mix": dict(args.mix), **result}, args.out)


if __name__ == "__main__":
    main()
