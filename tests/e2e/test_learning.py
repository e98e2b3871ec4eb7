"""Learning through `catcache serve`: a checked would-be hit is answered by the backend and judged
(instead of being served, or served with the backend asked beside it), an entry whose near miss
agreed serves the next one on its own evidence, what is learned shows in /stats and /metrics, is
shared by a second proxy on the same Redis, and is forgotten when its category is purged."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from catcache.store.embedded import EmbeddedRedis

from catcache.testing import TestBackend

TOKEN = "learning-test-token"
QUESTIONS = ["How do I reverse a list in Python?", "How can I reverse a list in Python?"]
POLICY = """
version: 1
tenancy: {by: none}
backends:
  large: {url: http://127.0.0.1:9/v1, role: large}
learning:
  enabled: true
  min_observations: 1
  exploration: {most: 1.0, least: 1.0, mode: miss}   # check every would-be hit, as a miss
categories:
  code:
    match: {regex: ['(?i)\\bpython\\b']}
    threshold: 0.9
  default: {threshold: 0.96}
"""


@pytest.fixture(scope="module")
def answering() -> Iterator[TestBackend]:
    """A backend that gives both questions the same answer, as a model would."""
    with TestBackend(replies={q: "Use reversed(items) or items[::-1]." for q in QUESTIONS}) as server:
        yield server


def ask(proxy, question: str) -> httpx.Headers:
    client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-learning", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="test-model", messages=[{"role": "user", "content": question}])
    return raw.headers


def learned(proxy, category: str) -> dict:
    stats = httpx.get(f"{proxy.url}/stats", headers={"authorization": f"Bearer {TOKEN}"}).json()
    return stats.get("learning", {}).get(category, {})


def eventually(check, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)
    return found


def test_a_checked_would_be_hit_is_judged_shared_and_purged(proxy_factory, answering, tmp_path: Path):
    policies = tmp_path / "policies.yaml"
    policies.write_text(POLICY)
    with EmbeddedRedis(tmp_path / "redis") as redis:
        env = {"CATCACHE_ADMIN_TOKEN": TOKEN}
        first = proxy_factory(policies=policies, redis_url=redis.url, backend_url=answering.base_url, env=env)
        assert ask(first, QUESTIONS[0])["x-catcache"] == "miss"
        checked = ask(first, QUESTIONS[1])
        assert checked["x-catcache"] == "miss" and checked["x-catcache-verdict"].startswith("explored")

        code = eventually(lambda: learned(first, "code").get("observations") and learned(first, "code"))
        assert code["observations"] == 1 and code["observed_false"] == 0 and code["explored"] == 1
        assert code["prior"] == 0.9
        metrics = httpx.get(f"{first.url}/metrics", headers={"authorization": f"Bearer {TOKEN}"}).text
        assert 'catcache_explored_total{category="code"} 1.0' in metrics
        assert 'catcache_judged_total{category="code"} 1.0' in metrics
        assert 'catcache_learned_threshold{category="code"}' in metrics

        second = proxy_factory(policies=policies, redis_url=redis.url, backend_url=answering.base_url, env=env)
        assert eventually(lambda: learned(second, "code").get("observations")) == 1

        purged = httpx.post(f"{first.url}/admin/purge", json={"category": "code"},
                            headers={"authorization": f"Bearer {TOKEN}"})
        assert purged.status_code == 200
        eventually(lambda: not learned(second, "code"))


SPECULATING = """
version: 1
tenancy: {by: none}
backends:
  large: {url: http://127.0.0.1:9/v1, role: large}
speculation: {max_in_flight: 8}
learning:
  enabled: true
  min_observations: 1
  exploration: {most: 0.0, least: 0.0}
categories:
  code:
    match: {regex: ['(?i)\\bpython\\b']}
    threshold: 0.98
    speculate: always
  default: {threshold: 0.96, speculate: always}
"""
NEAR = ["How do I reverse a list in Python?", "What is the best way to reverse a Python list?"]  # cosine 0.95


def test_a_near_miss_answered_by_a_speculative_call_is_judged_too(proxy_factory, tmp_path: Path):
    """The backend answers at once, so its answer begins before the lookup ends (proxy/speculation.py's
    late keep): the near miss it answers is judged all the same."""
    policies = tmp_path / "policies.yaml"
    policies.write_text(SPECULATING)
    with TestBackend(replies={q: "Use reversed(items) or items[::-1]." for q in NEAR}) as backend:
        proxy = proxy_factory(policies=policies, backend_url=backend.base_url,
                              env={"CATCACHE_ADMIN_TOKEN": TOKEN})
        assert ask(proxy, NEAR[0])["x-catcache"] == "miss"
        time.sleep(0.5)  # the first answer is stored in the background once its lookup ends
        assert ask(proxy, NEAR[1])["x-catcache"] == "miss"
        code = eventually(lambda: learned(proxy, "code").get("observations") and learned(proxy, "code"))
        assert code["observations"] == 1 and code["observed_false"] == 0 and code["explored"] == 0


SHADOWING = POLICY.replace("mode: miss", "budget: 1.0")


def test_a_shadow_check_serves_the_hit_and_asks_the_backend_beside_it(proxy_factory, tmp_path: Path):
    policies = tmp_path / "policies.yaml"
    policies.write_text(SHADOWING)
    paraphrase = "How do you reverse a list in Python?"  # cosine 0.997 to the first
    with TestBackend(replies={q: "Use reversed(items) or items[::-1]." for q in [QUESTIONS[0], paraphrase]}) as backend:
        proxy = proxy_factory(policies=policies, backend_url=backend.base_url, env={"CATCACHE_ADMIN_TOKEN": TOKEN})
        assert ask(proxy, QUESTIONS[0])["x-catcache"] == "miss"
        assert ask(proxy, paraphrase)["x-catcache"] == "hit-semantic"
        eventually(lambda: backend.calls("/v1/chat/completions") == 2)
        code = eventually(lambda: learned(proxy, "code").get("observations") and learned(proxy, "code"))
        assert code["observations"] == 1 and code["observed_false"] == 0 and code["explored"] == 1
        metrics = httpx.get(f"{proxy.url}/metrics", headers={"authorization": f"Bearer {TOKEN}"}).text
        assert 'catcache_shadow_checks_total{category="code"} 1.0' in metrics


def test_an_exact_hit_is_checked_again_beside_it_for_the_judges_noise(proxy_factory, tmp_path: Path):
    policies = tmp_path / "policies.yaml"
    policies.write_text(SHADOWING)
    with TestBackend(replies={QUESTIONS[0]: "Use reversed(items) or items[::-1]."}) as backend:
        proxy = proxy_factory(policies=policies, backend_url=backend.base_url, env={"CATCACHE_ADMIN_TOKEN": TOKEN})
        assert ask(proxy, QUESTIONS[0])["x-catcache"] == "miss"
        assert ask(proxy, QUESTIONS[0])["x-catcache"] == "hit-exact"
        eventually(lambda: backend.calls("/v1/chat/completions") == 2)
        code = eventually(lambda: learned(proxy, "code").get("judge_noise", {}).get("checked") and learned(proxy, "code"))
        assert code["judge_noise"] == {"checked": 1, "different": 0, "subtracted": 0.0}
        assert code["observations"] == 0  # a repeat is never a pair of the fit


VOUCHING = """
version: 1
tenancy: {by: none}
backends:
  large: {url: http://127.0.0.1:9/v1, role: large}
learning:
  enabled: true
  band: 0.1
  entry_margin: MARGIN
  exploration: {most: 0.0, least: 0.0}
categories:
  code:
    match: {regex: ['(?i)\\bpython\\b']}
    threshold: 0.999
  default: {threshold: 0.999}
"""
# Cosines to the first: 0.945 (a near miss that agrees) and 0.924 (within 0.03 of it).
VOUCHED = ["How do I reverse a list in Python?", "What is the best way to reverse a Python list?",
           "Reversing a list in Python: how?"]


@pytest.mark.parametrize("margin, third", [("0.03", "hit-semantic"), ("null", "miss")])
def test_an_entry_whose_near_miss_agreed_serves_the_next_on_its_own_evidence(proxy_factory, tmp_path: Path,
                                                                             margin: str, third: str):
    policies = tmp_path / "policies.yaml"
    policies.write_text(VOUCHING.replace("MARGIN", margin))
    with TestBackend(replies={q: "Use reversed(items) or items[::-1]." for q in VOUCHED}) as backend:
        proxy = proxy_factory(policies=policies, backend_url=backend.base_url, env={"CATCACHE_ADMIN_TOKEN": TOKEN})
        assert ask(proxy, VOUCHED[0])["x-catcache"] == "miss"
        assert ask(proxy, VOUCHED[1])["x-catcache"] == "miss"
        eventually(lambda: learned(proxy, "code").get("observations"))
        time.sleep(0.5)  # the entry's own note follows the category's count
        assert ask(proxy, VOUCHED[2])["x-catcache"] == third
        metrics = httpx.get(f"{proxy.url}/metrics", headers={"authorization": f"Bearer {TOKEN}"}).text
        assert ('catcache_vouched_hits_total{category="code"} 1.0' in metrics) == (third == "hit-semantic")
