"""`catcache serve` in front of backend replicas: a prefix goes to one replica, and a dead one is
survived."""

from __future__ import annotations

from pathlib import Path

import yaml
from openai import OpenAI

from catcache.testing import ProxyProcess, TestBackend, free_port
from catcache.testing.proxy import DEFAULT_POLICIES

CHAT = "/v1/chat/completions"


def test_the_proxy_routes_a_prefix_to_one_replica_and_survives_a_dead_one(tmp_path: Path):
    with TestBackend() as first, TestBackend() as second:
        dead = f"http://127.0.0.1:{free_port()}/v1"
        policy = yaml.safe_load(DEFAULT_POLICIES.read_text())
        policy["backends"]["large"] = {"urls": [first.base_url, second.base_url, dead], "role": "large"}
        path = tmp_path / "policies.yaml"
        path.write_text(yaml.safe_dump(policy))
        proxy = ProxyProcess(None, path, tmp_path / "data").start()
        try:
            client = OpenAI(base_url=proxy.base_url, api_key="sk-replicas", max_retries=0)
            for prompt in ("You are a pirate.", "You are a poet.", "You answer in French.", "Be terse."):
                first.reset()
                second.reset()
                for n in range(4):
                    reply = client.chat.completions.with_raw_response.create(
                        model="test-model", extra_headers={"cache-control": "no-store"},
                        messages=[{"role": "system", "content": prompt}, {"role": "user", "content": f"q {n}"}])
                    assert reply.http_response.status_code == 200
                assert sorted([first.calls(CHAT), second.calls(CHAT)]) == [0, 4]  # one replica took them all
        finally:
            proxy.stop()
