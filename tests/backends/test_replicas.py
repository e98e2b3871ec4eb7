"""Backend replicas: prefix affinity with bounded load, fail-over on a refused connection, health
probes that bring a replica back, and the policy's `urls` through a running proxy."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import orjson
import pytest
import yaml

from catcache.backends.client import BackendClient
from catcache.backends.replicas import ReplicaSet, affinity_key
from catcache.policy.loader import PolicyError, load_policy
from catcache.policy.schema import Backend
from catcache.testing import TestBackend, free_port

URLS = [f"http://10.0.0.{i}:8000/v1" for i in range(1, 5)]
CHAT = "/v1/chat/completions"


def chat(system: str, question: str = "hi") -> dict:
    return {"model": "test-model",
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}]}


def test_a_prefix_always_goes_to_the_same_replica_and_prefixes_spread():
    replicas = ReplicaSet(URLS)
    again = ReplicaSet(list(URLS))  # another proxy process: the ring is the same
    owners = Counter()
    for n in range(400):
        key = affinity_key("tenant", "code", chat(f"system prompt {n}"))
        chosen = replicas.order(key)[0]
        assert replicas.order(key)[0] is chosen
        assert again.order(key)[0].url == chosen.url
        owners[chosen.url] += 1
    assert set(owners) == set(URLS)
    assert min(owners.values()) > 400 / len(URLS) / 2  # no replica is starved of keys


def test_the_key_is_tenant_category_and_system_prompt_not_the_question():
    assert affinity_key("t", "code", chat("S", "one")) == affinity_key("t", "code", chat("S", "two"))
    assert affinity_key("t", "code", chat("S")) != affinity_key("u", "code", chat("S"))
    assert affinity_key("t", "code", chat("S")) != affinity_key("t", "math", chat("S"))
    assert affinity_key("t", "code", chat("S")) != affinity_key("t", "code", chat("T"))


def test_bounded_load_spills_a_hot_prefix_to_the_next_replica():
    replicas = ReplicaSet(URLS[:2], load_factor=1.25)
    key = affinity_key(None, "code", chat("hot"))
    first, second = replicas.order(key)
    first.in_flight = 3  # capacity = ceil(1.25 * (3 + 0 + 1) / 2) = 3: full
    assert replicas.order(key)[0] is second
    second.in_flight = 3  # both full: the ring's own choice
    assert replicas.order(key)[0] is first


def test_unhealthy_replicas_come_last_and_round_robin_cycles():
    replicas = ReplicaSet(URLS[:3], routing="round-robin")
    assert [replicas.order(None)[0].url for _ in range(6)] == URLS[:3] * 2
    replicas.replicas[0].healthy = False
    for _ in range(4):
        order = replicas.order("any")
        assert order[0] is not replicas.replicas[0] and order[-1] is replicas.replicas[0]


@pytest.mark.parametrize("backend, error", [
    ({"url": "http://a/v1", "urls": ["http://b/v1"]}, "backends.large.urls: give either `url` or a list of `urls`"),
    ({"role": "large"}, "backends.large.url: give either `url` or a list of `urls`"),
    ({"urls": ["http://a/v1", "http://a/v1"]}, "backends.large.urls: lists a replica twice"),
    ({"urls": ["http://a/v1", "a:8000"]}, "backends.large.urls.1: 'a:8000' is not an http(s) URL"),
    ({"urls": ["http://a/v1"], "load_factor": 0.5}, "backends.large.load_factor"),
])
def test_replica_lists_are_validated(tmp_path: Path, backend: dict, error: str):
    path = tmp_path / "policies.yaml"
    path.write_text(yaml.safe_dump({"backends": {"large": backend}}))
    with pytest.raises(PolicyError) as raised:
        load_policy(path)
    assert error in str(raised.value)


def test_a_single_url_is_one_replica():
    assert Backend(url="http://a/v1").replica_urls == ["http://a/v1"]


async def _send(client: BackendClient, system: str) -> str:
    response = await client.open("POST", CHAT, headers={}, content=orjson.dumps(chat(system)),
                                 affinity=affinity_key(None, None, chat(system)))
    await response.aread()
    await response.aclose()
    assert response.status_code == 200
    return str(response.request.url)


def test_refused_connections_fail_over_and_a_probe_brings_the_replica_back():
    dead_port = free_port()
    with TestBackend() as alive:
        dead_url = f"http://127.0.0.1:{dead_port}/v1"
        config = Backend(urls=[dead_url, alive.base_url])

        async def scenario() -> None:
            client = BackendClient("large", config, health_interval_s=0.2)
            try:
                # Every prefix is answered, whichever replica the ring picks for it.
                targets = [await _send(client, f"prompt {n}") for n in range(20)]
                assert all(t.startswith(alive.base_url) for t in targets)
                dead = client.replicas.replicas[0]
                assert not dead.healthy
                assert all(r.in_flight == 0 for r in client.replicas.replicas)  # slots given back
                with TestBackend(port=dead_port) as revived:
                    for _ in range(50):
                        if dead.healthy:
                            break
                        await asyncio.sleep(0.1)
                    assert dead.healthy
                    targets = [await _send(client, f"prompt {n}") for n in range(20)]
                    assert revived.calls(CHAT) > 0 and any(t.startswith(dead_url) for t in targets)
            finally:
                await client.aclose()

        asyncio.run(scenario())


def test_all_replicas_down_raises_the_connect_error():
    config = Backend(urls=[f"http://127.0.0.1:{free_port()}/v1", f"http://127.0.0.1:{free_port()}/v1"])

    async def scenario() -> None:
        client = BackendClient("large", config)
        try:
            with pytest.raises(Exception) as raised:
                await _send(client, "x")
            assert "connect" in type(raised.value).__name__.lower()
        finally:
            await client.aclose()

    asyncio.run(scenario())
