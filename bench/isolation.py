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
import multiprocessing
import tempfile
from pathlib import Path

import yaml

from bench import output, stack
from catcache.testing.traffic import Tally, drive

ROOT = Path(__file__).parents[1]
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
    from catcache.testing.inprocess import in_process

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
