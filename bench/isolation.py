"""Tenant isolation: many tenants asking the same questions never get another tenant's entry.

    python -m bench.isolation [--tenants 50] [--requests 100000] [--processes 4] [--concurrency 32]

Each of `--processes` processes runs catcache's ASGI app in-process (through httpx.ASGITransport:
no sockets) with its clients, the openai SDK; all of them share one real Redis (embedded, in a
temporary dir), so they are replicas that see each other's entries, and one test backend process.
Each has the real embedder and the shipped policies.yaml.
Each tenant (its own API key) asks the same questions, as the original (exact tier), in lower case
(semantic tier) and as streams. The test backend numbers every answer it generates, so each answer
a tenant is served from the cache can be traced to the request that generated it: a cross-tenant
hit is a hit whose answer was generated for another tenant.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import re
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import openai
import yaml

from bench import output, stack

ROOT = Path(__file__).parents[1]
GENERATED = {"miss", "bypass", "ic"}  # outcomes whose answer the backend made for this request
QUESTIONS = [f"Question {i}: what is the story behind the {noun}?" for i, noun in enumerate(
    "lighthouse violin glacier compass teapot volcano lantern harbor orchard comet bridge "
    "windmill canyon typewriter telescope cathedral bicycle meteor anchor quilt".split())]
NUMBER = re.compile(r"Answer #(\d+)")


@dataclass
class Tally:
    answers: list[tuple[int, str, int]] = field(default_factory=list)  # (tenant, outcome, answer number)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def outcomes(self) -> Counter:
        return Counter(outcome for _, outcome, _ in self.answers)

    def cross_tenant(self) -> list[tuple[int, str, int]]:
        """Hits whose answer was generated for another tenant, or for no request seen at all."""
        owner = {number: tenant for tenant, outcome, number in self.answers if outcome in GENERATED}
        return [a for a in self.answers if a[1] not in GENERATED and owner.get(a[2]) != a[0]]


async def ask(api: openai.AsyncOpenAI, question: str, stream: bool) -> tuple[str, str]:
    raw = await api.chat.completions.with_raw_response.create(
        model="test-model", messages=[{"role": "user", "content": question}], stream=stream)
    parsed = raw.parse()
    if stream:
        text = "".join([c.choices[0].delta.content or "" async for c in parsed if c.choices])
    else:
        text = parsed.choices[0].message.content or ""
    return raw.headers.get("x-catcache", ""), text


async def drive(clients: list[openai.AsyncOpenAI], requests: int, concurrency: int, seed: int = 1) -> Tally:
    """`requests` requests from len(clients) tenants, `concurrency` at a time: 70% exact repeats,
    20% lower-case paraphrases, 10% streams, over the same questions for every tenant."""
    rng = random.Random(seed)
    plan = iter([(rng.randrange(len(clients)), rng.randrange(len(QUESTIONS)), rng.random())
                 for _ in range(requests)])
    tally = Tally()

    async def worker() -> None:
        for tenant, index, draw in plan:
            question = QUESTIONS[index].lower() if 0.7 <= draw < 0.9 else QUESTIONS[index]
            try:
                outcome, text = await ask(clients[tenant], question, stream=draw >= 0.9)
                found = NUMBER.search(text)
                if found is None:
                    raise ValueError(f"an answer the test backend did not make: {text[:80]!r}")
                tally.answers.append((tenant, outcome, int(found.group(1))))
            except (openai.OpenAIError, ValueError) as exc:
                tally.errors.append(repr(exc))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    tally.seconds = time.perf_counter() - started
    return tally


def pointed_policies(source: Path, backend_url: str, out: Path) -> Path:
    """`source` with every backend pointed at `backend_url`."""
    policy = yaml.safe_load(source.read_text())
    for settings in (policy.get("backends") or {}).values():
        settings["url"] = backend_url
    out.write_text(yaml.safe_dump(policy))
    return out


def shard(redis_url: str, backend_url: str, policies: Path, tenants: int, requests: int, concurrency: int,
          seed: int) -> Tally:
    """One proxy's share: its own in-process app on the shared Redis and backend, all the tenants."""
    from catcache.proxy.app import Settings
    from tests.inprocess import in_process

    with in_process(Settings(backend=backend_url, redis_url=redis_url, policies=policies)) as proxy:
        clients = [proxy.openai(f"sk-tenant-{i:03d}") for i in range(tenants)]
        return proxy.run(drive(clients, requests, concurrency, seed))


def run(tenants: int, requests: int, concurrency: int, policies: Path, processes: int = 1) -> Tally:
    """`processes` proxies (each in its own process, as replicas are) on one Redis and one backend
    process, so every answer number is unique and entries cross proxies through Redis."""
    from catcache.store.embedded import EmbeddedRedis

    with tempfile.TemporaryDirectory(prefix="catcache-isolation-") as tmp, \
            EmbeddedRedis(Path(tmp) / "data") as redis, stack.backend(0, 0) as backend_url:
        pointed = pointed_policies(policies, backend_url, Path(tmp) / "policies.yaml")
        shares = [requests // processes + (i < requests % processes) for i in range(processes)]
        context = multiprocessing.get_context("spawn")
        with context.Pool(processes) as pool:
            parts = pool.starmap(shard, [(redis.url, backend_url, pointed, tenants, share, concurrency, seed)
                                         for seed, share in enumerate(shares, 1)])
    merged = Tally(seconds=max(part.seconds for part in parts))
    for part in parts:
        merged.answers += part.answers
        merged.errors += part.errors
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=50)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight per proxy process")
    parser.add_argument("--processes", type=int, default=4, help="proxy processes on the one Redis")
    parser.add_argument("--policies", type=Path, default=ROOT / "policies.yaml")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    tally = run(args.tenants, args.requests, args.concurrency, args.policies, args.processes)
    outcomes = tally.outcomes()
    cross = tally.cross_tenant()
    output.show(f"tenant isolation: {args.tenants} tenants, {args.requests} requests",
                ["figure", "value"],
                [["requests answered", len(tally.answers)], ["client errors", len(tally.errors)],
                 *[[f"  {name}", count] for name, count in sorted(outcomes.items())],
                 ["cross-tenant hits", len(cross)], ["requests/s", round(len(tally.answers) / tally.seconds, 1)]])
    output.save("isolation", {"tenants": args.tenants, "requests": args.requests, "concurrency": args.concurrency,
                              "processes": args.processes,
                              "answered": len(tally.answers), "errors": len(tally.errors),
                              "error_examples": tally.errors[:5], "outcomes": dict(outcomes),
                              "cross_tenant_hits": len(cross), "cross_tenant_examples": cross[:5],
                              "seconds": round(tally.seconds, 1)}, args.out)


if __name__ == "__main__":
    main()
