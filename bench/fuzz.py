"""The whole-proxy fuzzer, long: mutated headers, bodies and raw HTTP against a backend that
resets, half-closes, sends garbage, trickles and cuts streams; 0 plain-text 500s, every error in
OpenAI's shape and every gauge back to 0 when the load stops.

catcache runs in this process under uvicorn with its own HTTP protocol (as `catcache serve`
runs it), on an embedded Redis of its own, in front of the hostile backend; the default suite
runs the same fuzzer for 2,000 requests (tests/test_fuzz.py).

    python -m bench.fuzz --requests 20000 [--seed 1] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from pathlib import Path

from bench import output
from catcache.proxy.app import Settings, create_app
from catcache.store.embedded import EmbeddedRedis
from catcache.testing.fuzz import Fuzzer, fuzzing_target
from catcache.testing.hostile import HostileBackend

POLICIES = Path(__file__).resolve().parent.parent / "tests" / "data" / "policies-e2e.yaml"
TOKEN = "bench-fuzz-admin-token"
LIMIT = 256 * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as scratch, HostileBackend(seed=args.seed, slow_s=0.05) as hostile, \
            EmbeddedRedis(Path(scratch)) as redis:
        app = create_app(Settings(backend=hostile.base_url, policies=POLICIES, redis_url=redis.url,
                                  max_body_bytes=LIMIT, admin_token=TOKEN, backend_timeout=10.0))
        with fuzzing_target(app, client_timeout=3.0) as served:
            report = asyncio.run(Fuzzer(served.url, seed=args.seed, admin_token=TOKEN, max_body_bytes=LIMIT)
                                 .run(args.requests, args.concurrency))
            report.gauges = served.settled_gauges()
    summary = report.summary() | {"backend_seen": dict(hostile.seen), "load_average_before": load_before,
                                  "load_average_after": os.getloadavg()}
    output.show(f"fuzz: {report.requests} requests in {report.seconds:.0f} s", ["figure", "value"], [
        ("plain-text 500s", len(report.plain_500s)), ("errors not in OpenAI's shape", len(report.bad_shape)),
        ("streams ended cleanly without [DONE]", len(report.clean_truncations)),
        ("200 streams cut off (the backend broke)", report.cut_streams),
        ("gauges not 0 after the load", sum(1 for v in report.gauges.values() if v)),
        ("statuses", summary["statuses"]), ("load average before / after", f"{load_before[0]:.1f} / {os.getloadavg()[0]:.1f}")])
    output.save("fuzz", summary, args.out)
    raise SystemExit(1 if report.failures else 0)


if __name__ == "__main__":
    main()
