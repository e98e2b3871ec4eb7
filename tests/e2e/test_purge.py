"""`catcache purge` and POST /admin/purge with two proxies on one Redis: a purged entry leaves Redis
and both proxies' indexes (the semantic tier too, through the event stream)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from catcache.store.embedded import EmbeddedRedis
from catcache.store.purge import Purge

POLICIES = Path(__file__).parents[1] / "data" / "policies-e2e.yaml"
TOKEN = "purge-test-token"
ALICE, BOB = "sk-purge-alice", "sk-purge-bob"


@pytest.fixture(scope="module")
def pair(module_proxy_factory, tmp_path_factory) -> Iterator[tuple]:
    with EmbeddedRedis(tmp_path_factory.mktemp("purge-redis")) as server:
        env = {"CATCACHE_ADMIN_TOKEN": TOKEN}
        first = module_proxy_factory(policies=POLICIES, redis_url=server.url, env=env)
        second = module_proxy_factory(policies=POLICIES, redis_url=server.url, env=env)
        yield first, second, server.url


def outcome(proxy, key: str, question: str) -> tuple[str, str]:
    raw = openai.OpenAI(base_url=proxy.base_url, api_key=key, max_retries=0).chat.completions.with_raw_response.create(
        model="test-model", messages=[{"role": "user", "content": question}])
    return raw.headers["x-catcache"], raw.headers.get("x-catcache-key", "")


def eventually(check, timeout: float = 5.0) -> None:
    """The other proxy learns through the event stream, a fraction of a second later."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline
        time.sleep(0.1)


def admin_purge(proxy, body: dict, token: str = TOKEN) -> httpx.Response:
    return httpx.post(f"{proxy.url}/admin/purge", json=body, headers={"authorization": f"Bearer {token}"})


def tenant(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def indexed(proxy) -> int:
    return sum(httpx.get(f"{proxy.url}/healthz").json()["index"].values())


def test_cli_purge_by_tenant_empties_both_proxies_semantic_tier(pair) -> None:
    first, second, url = pair
    question = "Which ocean is the deepest on our planet today?"
    for key in (ALICE, BOB):
        assert outcome(first, key, question)[0] == "miss"
    eventually(lambda: indexed(second) == indexed(first))
    before = indexed(first)
    assert outcome(second, ALICE, question.lower())[0] == "hit-semantic"
    done = subprocess.run([sys.executable, "-m", "catcache", "purge", "--redis", url, "--tenant", tenant(ALICE)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "purged 1 entries" in done.stdout, done.stdout + done.stderr
    eventually(lambda: indexed(first) == indexed(second) == before - 1)
    assert outcome(second, ALICE, question.lower())[0] == "miss"
    assert outcome(first, BOB, question)[0] == "hit-exact", "another tenant's entry was purged"


def test_route_purge_by_key_and_category(pair) -> None:
    first, second, _ = pair
    _, key = outcome(first, ALICE, "How do I sort a dict by value in Python?")
    outcome(first, ALICE, "Tell me about the history of cheese please")
    answer = admin_purge(second, {"key": key})
    assert answer.status_code == 200 and answer.json()["purged"] == 1
    assert outcome(first, ALICE, "How do I sort a dict by value in Python?")[0] == "miss"  # stored again
    eventually(lambda: indexed(second) == indexed(first))
    assert admin_purge(first, {"category": "code"}).json() == {"purged": 1, "categories": {"code": 1}}
    assert outcome(second, ALICE, "how do i sort a dict by value in python?")[0] == "miss"
    assert outcome(first, ALICE, "Tell me about the history of cheese please")[0] == "hit-exact"


def test_route_purge_by_age(pair) -> None:
    first, _, _ = pair
    outcome(first, BOB, "An old question about volcanoes?")
    time.sleep(1.5)
    outcome(first, BOB, "A new question about glaciers?")
    answer = admin_purge(first, {"older_than": "1s", "tenant": tenant(BOB)})
    assert answer.status_code == 200 and answer.json()["purged"] >= 1
    assert outcome(first, BOB, "An old question about volcanoes?")[0] == "miss"
    assert outcome(first, BOB, "A new question about glaciers?")[0] == "hit-exact"


def test_purge_needs_the_token_and_a_condition(pair) -> None:
    first, _, _ = pair
    assert admin_purge(first, {"all": True}, token="wrong").status_code == 403
    for body in ({}, {"all": True, "category": "code"}, {"category": 5}, {"older_than": "soon"}, {"colour": "red"}):
        refused = admin_purge(first, body)
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_purge", body
    with pytest.raises(ValueError):
        Purge()
