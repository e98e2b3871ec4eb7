"""`catcache serve` serves its request stats and Prometheus metrics."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest

ON_CLUSTER_TOO = True  # conftest runs the Redis tests on one server and on a cluster
E2E_POLICIES = Path(__file__).parents[1] / "data" / "policies-e2e.yaml"


def test_proxy_serves_stats_and_metrics(proxy_factory, fresh_backend, redis_url, clean_redis):
    proxy = proxy_factory(policies=E2E_POLICIES, redis_url=redis_url)
    body = {"model": "test-model", "messages": [{"role": "user", "content": "What is the tallest mountain?"}]}
    outcomes = [httpx.post(f"{proxy.base_url}/chat/completions", json=body, headers={"authorization": "Bearer k"},
                           timeout=30).headers["x-catcache"] for _ in range(3)]
    assert outcomes == ["miss", "hit-exact", "hit-exact"]
    deadline = time.monotonic() + 10
    while True:  # the counters reach Redis within about a second
        stats = httpx.get(f"{proxy.url}/stats", params={"since": "10m"}).json()
        if stats["total"]["requests"] == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert stats["total"]["requests"] == 3 and stats["total"]["rates"]["hit-exact"] == pytest.approx(2 / 3)
    assert stats["total"]["tokens_saved"] > 0
    assert httpx.get(f"{proxy.url}/stats", params={"since": "later"}).status_code == 400
    everything = httpx.get(f"{proxy.url}/stats", params={"since": "99999999999d"})  # before the epoch: all there is
    assert everything.status_code == 200 and everything.json()["total"]["requests"] == 3

    metrics = httpx.get(f"{proxy.url}/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    for series in (r'catcache_requests_total\{category="[^"]+",outcome="hit-exact"\} 2\.0',
                   r'catcache_request_duration_seconds_bucket\{le="[^"]+",outcome="miss"\}',
                   r"catcache_redis_up 1\.0", r'catcache_backend_up\{backend="large"\} 1\.0',
                   r'catcache_backend_in_flight\{backend="large"\} 0\.0', r"catcache_index_entries\{category="):
        assert re.search(series, metrics.text), series
