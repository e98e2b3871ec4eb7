"""Faults under load, through the openai SDK: 0 client errors caused by catcache, no acknowledged
entry lost. Each test keeps several clients asking cached and fresh questions (a third as streams)
while the fault happens, then checks every answer the clients got."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import redis

from catcache.testing.faults import BackendProcess, Load, RedisProcess, StallingProxy, ask, doc_keys, wait_ping

POLICIES = Path(__file__).parents[1] / "data" / "policies-e2e.yaml"
WARM = [f"What is the capital of country number {i}?" for i in range(12)]


def warm_up(base_url: str, api_key: str = "sk-load") -> None:
    """Cache WARM, so the load's warm questions are hits."""
    api = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0)
    for question in WARM:
        assert ask(api, question).error is None
    assert all(ask(api, question).outcome == "hit-exact" for question in WARM)


def wait_for_hits(base_url: str, timeout: float = 10.0) -> None:
    api = openai.OpenAI(base_url=base_url, api_key="sk-load", max_retries=0)
    deadline = time.monotonic() + timeout
    while ask(api, WARM[0]).outcome != "hit-exact":
        assert time.monotonic() < deadline, "caching did not resume"
        time.sleep(0.2)


def test_embedded_redis_killed_is_restarted_from_its_aof(proxy_factory) -> None:
    proxy = proxy_factory(policies=POLICIES)
    warm_up(proxy.base_url)
    url = (proxy.data_dir / "redis.url").read_text().strip()
    client = redis.Redis.from_url(url)
    acknowledged = doc_keys(client)
    pid = int((proxy.data_dir / "redis.pid").read_text())
    with Load(proxy.base_url, WARM) as load:
        time.sleep(1.0)
        os.kill(pid, signal.SIGKILL)
        assert wait_ping(url, timeout=2.0) < 2.0, "the embedded redis-server was not back within 2 s"
        wait_for_hits(proxy.base_url)
        time.sleep(1.0)
    assert load.errors() == [], load.errors()[:3]
    assert len(load.results) > 20 and "hit-exact" in load.outcomes()
    assert acknowledged <= doc_keys(client), "entries acknowledged before the kill were lost"
    with pytest.raises(ProcessLookupError):  # reaped, not left a zombie
        os.kill(pid, 0)
    assert httpx.get(f"{proxy.url}/healthz").json()["redis_restarts"] == 1


@pytest.fixture(scope="module")
def stack(module_proxy_factory, tmp_path_factory) -> Iterator[tuple]:
    """catcache -> a stalling TCP relay -> a redis-server it can kill; and a backend process it can
    kill; with a 1 s backend timeout."""
    store = RedisProcess(tmp_path_factory.mktemp("external-redis")).start()
    relay = StallingProxy(store.port)
    backend = BackendProcess().start()
    proxy = module_proxy_factory(policies=POLICIES, redis_url=relay.url, backend_url=backend.base_url,
                                 extra_args=["--backend-timeout", "1"])
    warm_up(proxy.base_url)
    yield proxy, store, relay, backend
    backend.kill()
    relay.close()
    store.kill()


def test_external_redis_restarted(stack) -> None:
    proxy, store, _, _ = stack
    client = redis.Redis.from_url(store.url)
    acknowledged = doc_keys(client)
    with Load(proxy.base_url, WARM) as load:
        time.sleep(1.0)
        store.kill()
        time.sleep(1.5)
        store.start()
        wait_for_hits(proxy.base_url)
        time.sleep(1.0)
    assert load.errors() == [], load.errors()[:3]
    assert {"bypass", "hit-exact"} <= load.outcomes()
    assert acknowledged <= doc_keys(redis.Redis.from_url(store.url))


def test_slow_redis_is_bypassed(stack) -> None:
    proxy, _, relay, _ = stack
    with Load(proxy.base_url, WARM) as load:
        time.sleep(1.0)
        relay.stalled.set()
        stalled_at = time.monotonic()
        time.sleep(3.0)
        relay.stalled.clear()
        wait_for_hits(proxy.base_url)
        time.sleep(1.0)
    assert load.errors() == [], load.errors()[:3]
    during = [r.outcome for r in load.results if stalled_at + 1.0 < r.at < stalled_at + 3.0]
    assert during and set(during) == {"bypass"}, "requests waited for the stalled redis instead of passing through"


def test_backend_hanging_is_a_504(stack) -> None:
    proxy, *_ = stack
    api = openai.OpenAI(base_url=proxy.base_url, api_key="sk-hang", max_retries=0)
    with Load(proxy.base_url, WARM) as load:
        hung = [ask(api, f"Hang {i}", stream=i % 2 == 1, headers={"x-test-hang": "1"}) for i in range(2)]
    for result in hung:
        assert isinstance(result.error, openai.APIStatusError) and result.error.status_code == 504
        assert result.error.body["code"] == "backend_timeout" and result.error.body["type"] == "backend_error"
    assert load.errors() == [], load.errors()[:3]


def test_backend_cutting_a_stream_stores_nothing(stack) -> None:
    proxy, *_ = stack
    api = openai.OpenAI(base_url=proxy.base_url, api_key="sk-cut", max_retries=0)
    with Load(proxy.base_url, WARM) as load:
        cut = [ask(api, f"Cut {i}", stream=True, headers={"x-test-truncate": "1"}) for i in range(3)]
    assert all(isinstance(r.error, openai.APIConnectionError | httpx.TransportError) for r in cut), cut
    assert all(ask(api, f"Cut {i}").outcome == "miss" for i in range(3)), "a cut stream was stored"
    assert load.errors() == [], load.errors()[:3]


def test_backend_killed_is_a_502_and_hits_go_on(stack) -> None:
    """Last in the module: the backend is restarted on its port at the end."""
    proxy, _, _, backend = stack
    with Load(proxy.base_url, WARM) as load:
        time.sleep(1.0)
        backend.kill()
        killed_at = time.monotonic()
        time.sleep(2.0)
    backend.start()
    after = [r for r in load.results if r.at > killed_at + 0.5]
    assert after and all(r.error is None and r.outcome == "hit-exact" for r in after if r.warm), \
        "cached answers must be served while the backend is down"
    for result in load.errors():
        if isinstance(result.error, openai.APIStatusError):
            assert result.error.status_code == 502 and result.error.body["code"] == "backend_unreachable"
        else:  # a stream the backend was sending when it died: cut off, not ended as if whole
            assert result.stream and not result.warm and isinstance(
                result.error, openai.APIConnectionError | httpx.TransportError), result.error
    assert any(isinstance(r.error, openai.APIStatusError) for r in after)


def test_a_bad_backend_timeout_is_refused(tmp_path) -> None:
    refused = subprocess.run(["catcache", "serve", "--backend", "http://127.0.0.1:9/v1", "--backend-timeout", "0",
                              "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "--backend-timeout" in refused.stderr
