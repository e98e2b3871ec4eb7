"""The whole-proxy fuzzer (catcache.testing.fuzz), bounded for the default suite: a few thousand
requests with mutated headers and bodies against a backend that misbehaves on purpose. The long
run is `python -m bench.fuzz --requests 20000` (bench/README.md, section 13)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path


from catcache.proxy.app import Settings, create_app
from catcache.store.embedded import EmbeddedRedis

from catcache.testing.fuzz import Fuzzer, fuzzing_target
from catcache.testing.hostile import BEHAVIOURS, HostileBackend

POLICIES = Path(__file__).parents[1] / "data" / "policies-e2e.yaml"
TOKEN = "admin-token-for-the-fuzzer"
REQUESTS = int(os.environ.get("CATCACHE_FUZZ_REQUESTS", "2000"))
LIMIT = 256 * 1024


def test_fuzzing_the_proxy_and_its_backend(tmp_path: Path) -> None:
    with HostileBackend(seed=2021, slow_s=0.05) as hostile, EmbeddedRedis(tmp_path / "redis") as redis:
        app = create_app(Settings(backend=hostile.base_url, policies=POLICIES, redis_url=redis.url,
                                  max_body_bytes=LIMIT, admin_token=TOKEN, backend_timeout=10.0))
        with fuzzing_target(app, client_timeout=3.0) as served:
            report = asyncio.run(Fuzzer(served.url, seed=21, admin_token=TOKEN, max_body_bytes=LIMIT).run(REQUESTS))
            report.gauges = served.settled_gauges()
    summary = report.summary()
    assert report.failures == [], summary
    # The run reached what it claims to fuzz: every backend behaviour, answers and errors of each kind.
    assert set(hostile.seen) == set(BEHAVIOURS), summary
    assert {200, 400, 404, 413, 502} <= set(report.statuses), summary
    assert report.cut_streams > 0 and report.behaviours["raw"] > 0, summary
