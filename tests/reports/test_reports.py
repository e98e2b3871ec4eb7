"""Reports: records counted into Redis, read back by /stats, /metrics and `catcache report`."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from redis.asyncio import Redis

from catcache import cli
from catcache.policy.schema import Category, InContext, Policy, Price
from catcache.reports import buckets, report
from catcache.reports.record import RequestRecord
from catcache.reports.recorder import MAX_PENDING_MINUTES, Recorder, is_near_miss
from catcache.reports.stats import Window
from catcache.store.connect import connect, is_cluster_url
from catcache.testing import free_port

ON_CLUSTER_TOO = True  # conftest: every Redis test here runs on one server and on a cluster

POLICY = Policy(
    prices={"big": Price(input=1.0, output=2.0)},
    backends={"small": {"url": "http://127.0.0.1:1/v1", "role": "small"}},
    categories={"default": Category(), "code": Category(threshold=0.93, ic=InContext(low=0.85))},
)


def records(now: float) -> list[RequestRecord]:
    """Ten code requests and two default ones, all in the last few minutes."""
    code = [
        RequestRecord("miss", "code", "big", similarity=0.40, latency_ms=900, backend_latency_ms=880,
                      prompt_tokens=100, completion_tokens=200, time=now - 120),
        RequestRecord("miss", "code", "big", similarity=0.91, latency_ms=1100, backend_latency_ms=1080,
                      prompt_tokens=100, completion_tokens=300, time=now - 110),  # near: within 0.05
        RequestRecord("miss", "code", "big", similarity=0.95, verdict="numbers differ", latency_ms=800,
                      backend_latency_ms=790, prompt_tokens=50, completion_tokens=100, time=now - 100),
        RequestRecord("ic", "code", "big", similarity=0.86, latency_ms=300, backend_latency_ms=280,
                      prompt_tokens=400, completion_tokens=100, time=now - 60),
        *[RequestRecord("hit-exact", "code", "big", latency_ms=2, backend_latency_ms=1000,
                        prompt_tokens=100, completion_tokens=200, time=now - 50) for _ in range(4)],
        *[RequestRecord("hit-semantic", "code", "big", similarity=0.97, latency_ms=12, backend_latency_ms=500,
                        prompt_tokens=10, completion_tokens=20, time=now - 5) for _ in range(2)],
    ]
    default = [RequestRecord("bypass", "default", "unpriced", latency_ms=700, time=now - 30),
               RequestRecord("error", "default", "unpriced", latency_ms=5, time=now - 3)]
    return code + default


async def recorded(url: str, batch: list[RequestRecord]) -> Recorder:
    redis = connect(url)
    recorder = Recorder(redis, lambda: POLICY)
    for record in batch:
        recorder.record(record)
    assert await recorder.flush()
    await recorder.close()
    await redis.aclose()
    return recorder


async def window(url: str, since: str = "1h") -> Window:
    redis = connect(url)
    try:
        return await Window.load(redis, since)
    finally:
        await redis.aclose()


async def test_counters_add_up_in_redis(redis_url, clean_redis):
    now = time.time()
    await recorded(redis_url, records(now))
    await recorded(redis_url, records(now))  # a second proxy, or a restart: the counts add
    summary = (await window(redis_url)).summary()
    code, total = summary["categories"]["code"], summary["total"]
    assert list(summary["categories"]) == ["code", "default"]
    assert code["requests"] == 20 and total["requests"] == 24
    assert code["hit_rate"] == pytest.approx(12 / 20)
    assert code["rates"]["hit-exact"] == pytest.approx(8 / 20) and code["rates"]["ic"] == pytest.approx(2 / 20)
    assert code["near_misses"] == 4  # 0.91 (within 0.05 of 0.93) and the verifier's refusal, twice
    assert code["tokens_saved"] == 2 * (4 * 300 + 2 * 30)
    assert code["latency_saved_ms"] == pytest.approx(2 * (4 * 1000 + 2 * 500))
    assert code["cost_saved_usd"] == pytest.approx(2 * (4 * (100 + 400) + 2 * (10 + 40)) / 1e6)
    assert code["outcomes"]["miss"]["requests"] == 6
    assert summary["categories"]["default"]["cost_saved_usd"] == 0
    assert summary["thresholds"]["code|threshold"] == 0.93 and summary["thresholds"]["code|ic_low"] == 0.85


async def test_window_leaves_out_older_minutes(redis_url, clean_redis):
    now = time.time()
    await recorded(redis_url, [RequestRecord("miss", "code", time=now - 3 * 3600),
                               RequestRecord("hit-exact", "code", time=now - 60)])
    assert (await window(redis_url, "1h")).summary()["total"]["requests"] == 1
    assert (await window(redis_url, "4h")).summary()["total"]["requests"] == 2


async def test_histograms_and_retention(redis_url, clean_redis):
    now = time.time()
    await recorded(redis_url, records(now))
    found = await window(redis_url)
    sims = found.histogram("sim", ("hit-semantic",), "code")
    assert sum(sims) == 2 and sims[buckets.sim_bin(0.97)] == 2
    assert sum(found.histogram("sim", ("miss", "ic"), "code")) == 3  # 0.40 is below the histogram
    assert sum(found.histogram("lat", ("hit-exact", "hit-semantic"))) == 6
    newest = max(record.time for record in records(now))  # `now`'s own minute may hold no record
    ttl = await connect(redis_url).ttl(buckets.bucket_key(int(newest // 60)))
    assert 13 * 86400 < ttl <= 14 * 86400


async def test_flush_is_one_pipeline_and_batches(redis_url, clean_redis):
    if is_cluster_url(redis_url):
        pytest.skip("counts EXEC in INFO commandstats, which a cluster splits over its nodes")
    redis = connect(redis_url)
    recorder = Recorder(redis, lambda: POLICY, flush_every=0.05)
    for record in records(time.time()):
        recorder.record(record)  # on the loop: starts the background flusher
    before = await redis.info("commandstats")
    await asyncio.sleep(0.3)
    after = await redis.info("commandstats")
    assert after.get("cmdstat_exec", {}).get("calls", 0) - before.get("cmdstat_exec", {}).get("calls", 0) == 1
    assert (await window(redis_url)).summary()["total"]["requests"] == 12
    await recorder.close()
    await redis.aclose()


async def test_redis_outage_never_raises_and_stays_bounded():
    redis = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.2)
    recorder = Recorder(redis, lambda: POLICY)
    start = time.time() - 2 * MAX_PENDING_MINUTES * 60
    for minute in range(2 * MAX_PENDING_MINUTES):
        recorder.record(RequestRecord("miss", "code", time=start + minute * 60))
    assert not await recorder.flush()
    assert len(recorder._pending.minutes) == MAX_PENDING_MINUTES
    text = generate_latest(recorder.registry).decode()
    assert "catcache_stats_flush_failures_total 1.0" in text
    assert f"catcache_stats_dropped_minutes_total {float(MAX_PENDING_MINUTES)}" in text
    await recorder.close()  # one more failed flush, still no exception
    await redis.aclose()


def test_prometheus_series():
    recorder = Recorder(None, lambda: POLICY)
    for record in records(time.time()):
        recorder.record(record)
    text = generate_latest(recorder.registry).decode()
    assert 'catcache_requests_total{category="code",outcome="hit-exact"} 4.0' in text
    assert 'catcache_tokens_total{category="code",kind="completion",outcome="hit-semantic"} 40.0' in text
    assert 'catcache_backend_latency_avoided_seconds_total{category="code"} 5.0' in text
    assert 'catcache_near_misses_total{category="code"} 2.0' in text
    assert 'catcache_request_duration_seconds_bucket{le="0.0025",outcome="hit-exact"} 4.0' in text
    assert 'catcache_similarity_bucket{category="code",le="0.99",outcome="hit-semantic"} 2.0' in text


def test_access_log_line(caplog):
    recorder = Recorder(None, lambda: POLICY)
    with caplog.at_level("INFO", logger="catcache.access"):
        recorder.record(RequestRecord("hit-semantic", "code", "big", tenant="ab12", similarity=0.95,
                                      latency_ms=9.5, backend_latency_ms=800, prompt_tokens=3, completion_tokens=4))
    line = json.loads(caplog.records[-1].getMessage())
    assert {k: line[k] for k in ("tenant", "category", "outcome", "similarity", "latency_ms", "backend_latency_ms",
                                 "prompt_tokens", "completion_tokens")} == {
        "tenant": "ab12", "category": "code", "outcome": "hit-semantic", "similarity": 0.95, "latency_ms": 9.5,
        "backend_latency_ms": 800, "prompt_tokens": 3, "completion_tokens": 4}
    assert isinstance(line["time"], float)


def test_near_misses():
    near = lambda **kw: is_near_miss(POLICY, RequestRecord(**{"outcome": "miss", "category": "code", **kw}))
    assert near(similarity=0.89) and not near(similarity=0.87)
    assert near(similarity=0.5, verdict="numbers differ")
    assert not near() and not near(outcome="hit-semantic", similarity=0.99)
    assert near(category="unknown", similarity=0.9)  # falls back to the default category's 0.92


def run_report(url: str, *options: str) -> int:
    return cli.main(["report", "--redis", url, *options])


async def test_report_formats(redis_url, clean_redis, tmp_path):
    await recorded(redis_url, records(time.time()))
    assert await asyncio.to_thread(run_report, redis_url, "--format", "json", "--out", str(tmp_path / "r.json")) == 0
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["since"] == "24h" and data["categories"]["code"]["requests"] == 10

    assert await asyncio.to_thread(run_report, redis_url, "--out", str(tmp_path / "r.txt")) == 0
    table = (tmp_path / "r.txt").read_text()
    for text in ("Category", "Hit rate", "Near misses", "Tokens saved", "Cost saved", "code", "default", "60.0%"):
        assert text in table

    assert await asyncio.to_thread(run_report, redis_url, "--format", "html", "--out", str(tmp_path / "r.html")) == 0
    page = (tmp_path / "r.html").read_text()
    assert page.count("<svg") == 4  # hit rate over time, outcome mix, latency, similarity
    for text in ("Hit rate over time", "Outcome mix", "Latency: hits against misses", "Similarity against"):
        assert text in page
    assert not re.search(r"""<(script|link|img)\b|src=|url\(http""", page)  # self-contained


async def test_report_of_an_empty_window_and_bad_since(redis_url, clean_redis, tmp_path, capsys):
    assert await asyncio.to_thread(run_report, redis_url, "--format", "html", "--out", str(tmp_path / "e.html")) == 0
    assert "No requests in this window" in (tmp_path / "e.html").read_text()
    assert await asyncio.to_thread(run_report, redis_url, "--since", "soon") == 2
    assert "--since" in capsys.readouterr().err


def report_of_data_dir(data_dir: Path, out: Path) -> dict:
    assert report.run(data_dir=str(data_dir), output_format="json", out=out) == 0  # CATCACHE_REDIS left out
    return json.loads(out.read_text())


def test_report_reads_a_data_dir(tmp_path):
    from catcache.store.embedded import EmbeddedRedis

    with EmbeddedRedis(tmp_path / "data") as server:
        asyncio.run(recorded(server.url, records(time.time())))
    assert report_of_data_dir(tmp_path / "data", tmp_path / "r.json")["total"]["requests"] == 12


def test_report_reads_a_data_dir_in_use(tmp_path):
    """While a catcache holds the data dir, the report reads the Redis that it published."""
    from catcache.store.embedded import EmbeddedRedis

    with EmbeddedRedis(tmp_path / "data") as server:
        asyncio.run(recorded(server.url, records(time.time())))
        assert report_of_data_dir(tmp_path / "data", tmp_path / "r.json")["total"]["requests"] == 12
    assert not (tmp_path / "data" / "redis.url").exists()
