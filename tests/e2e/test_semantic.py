"""The semantic tier end to end: real model, real Redis, the openai SDK."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import openai
import pytest

POLICIES = Path(__file__).parents[1] / "data" / "policies-e2e.yaml"
PARAPHRASES = ("How do I reverse a list in Python?", "How can I reverse a list in Python?")
# A hard negative labeled in ../shared/workloads/qqp-dev/pairs.jsonl (calibration half): cosine 0.97,
# a different question.
HARD_NEGATIVE = ("How did LinkedIn perform in 2013?", "How did LinkedIn perform in 2012?")


@pytest.fixture
def policy_file(tmp_path) -> Path:
    path = tmp_path / "policies.yaml"
    path.write_text(POLICIES.read_text())
    return path


@pytest.fixture(scope="module")
def proxy(module_proxy_factory):
    """One proxy for the module; each test keeps to its own tenant through `api_key`."""
    return module_proxy_factory(policies=POLICIES)


@pytest.fixture
def own_proxy(proxy_factory, policy_file):
    """A proxy of this test's own, for tests that edit its policy file."""
    return proxy_factory(policies=policy_file)


def ask(proxy, text: str, *, key: str, model: str = "test-model", history=(), headers=None):
    api = openai.OpenAI(base_url=proxy.base_url, api_key=key, max_retries=0)
    messages = [*history, {"role": "user", "content": text}]
    raw = api.chat.completions.with_raw_response.create(model=model, messages=messages, extra_headers=headers)
    return raw.headers, raw.parse().choices[0].message.content


def test_paraphrase_is_a_semantic_hit(proxy, api_key):
    _, answer = ask(proxy, key=api_key, text=PARAPHRASES[0])
    headers, again = ask(proxy, key=api_key, text=PARAPHRASES[1])
    assert headers["x-catcache"] == "hit-semantic"
    assert headers["x-catcache-category"] == "code"
    assert float(headers["x-catcache-similarity"]) >= 0.9
    assert again == answer


def test_hard_negative_is_not_a_hit(proxy, api_key):
    ask(proxy, key=api_key, text=HARD_NEGATIVE[0])
    headers, _ = ask(proxy, key=api_key, text=HARD_NEGATIVE[1])
    assert headers["x-catcache"] == "miss" and headers["x-catcache-category"] == "default"
    assert float(headers["x-catcache-similarity"]) >= 0.9, "above the threshold: the verifier refused it"
    assert headers["x-catcache-verdict"].startswith("numbers differ: 2012 vs 2013")


def test_no_hit_across_scopes(proxy, api_key):
    ask(proxy, key=api_key, text=PARAPHRASES[0])
    assert ask(proxy, key=api_key, text=PARAPHRASES[1], model="other-model")[0]["x-catcache"] == "miss"
    assert ask(proxy, key=api_key + "-two", text=PARAPHRASES[1])[0]["x-catcache"] == "miss"
    earlier = [{"role": "user", "content": "I use Rust."}, {"role": "assistant", "content": "Nice."}]
    assert ask(proxy, key=api_key, text=PARAPHRASES[1], history=earlier)[0]["x-catcache"] == "miss"


def test_a_paraphrase_in_another_category_is_found(proxy, api_key):
    """Stored as `default` (by the header), asked as `code` (by its rule): still a hit."""
    _, answer = ask(proxy, key=api_key, text=PARAPHRASES[0], headers={"x-catcache-category": "default"})
    headers, again = ask(proxy, key=api_key, text=PARAPHRASES[1])
    assert (headers["x-catcache"], headers["x-catcache-category"], again) == ("hit-semantic", "code", answer)


def test_the_stricter_category_decides_across_categories(proxy, api_key):
    """`strict` asks 0.999 of a neighbour: its entries serve no paraphrase, whatever the query's category;
    `weather` keeps answers 2 s: an older `default` entry is too old for a weather question."""
    ask(proxy, key=api_key, text=PARAPHRASES[0], headers={"x-catcache-category": "strict"})
    headers, _ = ask(proxy, key=api_key, text=PARAPHRASES[1])
    assert headers["x-catcache"] == "miss" and float(headers["x-catcache-similarity"]) >= 0.9
    ask(proxy, key=api_key, text="What is the weather like in Oslo?", headers={"x-catcache-category": "default"})
    assert ask(proxy, key=api_key, text="What's the weather like in Oslo?")[0]["x-catcache"] == "hit-semantic"
    time.sleep(2.5)
    assert ask(proxy, key=api_key, text="What's the weather like in Oslo?")[0]["x-catcache"] == "miss"


def test_follow_up_does_not_hit_another_conversation(proxy, api_key):
    first = [{"role": "user", "content": "How do I sort a dict in Python?"}, {"role": "assistant", "content": "sorted()"}]
    second = [{"role": "user", "content": "How do I read a file in Python?"}, {"role": "assistant", "content": "open()"}]
    ask(proxy, key=api_key, text="And in Java?", history=first)
    assert ask(proxy, key=api_key, text="And in Java?", history=second)[0]["x-catcache"] == "miss"
    assert ask(proxy, key=api_key, text="and in Java ?", history=first)[0]["x-catcache"] in ("hit-exact", "hit-semantic")


def test_ttl_expiry(proxy, api_key):
    ask(proxy, key=api_key, text="What is the weather like in Paris?")
    assert ask(proxy, key=api_key, text="What is the weather like in Paris?")[0]["x-catcache"] == "hit-exact"
    assert ask(proxy, key=api_key, text="What's the weather like in Paris?")[0]["x-catcache"] == "hit-semantic"
    time.sleep(2.5)
    assert ask(proxy, key=api_key, text="What is the weather like in Paris?")[0]["x-catcache"] == "miss"


def test_quota_evicts_least_recently_used(proxy, api_key):
    tiny = {"x-catcache-category": "tiny"}
    for question in ("Name a red fruit.", "Name a blue bird.", "Name a green vegetable."):
        ask(proxy, key=api_key, text=question, headers=tiny)
    assert ask(proxy, key=api_key, text="Name a red fruit.", headers=tiny)[0]["x-catcache"] == "miss"
    assert ask(proxy, key=api_key, text="Name a green vegetable.", headers=tiny)[0]["x-catcache"] == "hit-exact"
    assert httpx.get(f"{proxy.url}/healthz").json()["index"]["tiny"] <= 2


def test_index_is_rebuilt_after_restart(proxy, api_key):
    ask(proxy, key=api_key, text=PARAPHRASES[0])
    proxy.restart()
    assert httpx.get(f"{proxy.url}/healthz").json()["index"]["code"] >= 1
    assert ask(proxy, key=api_key, text=PARAPHRASES[1])[0]["x-catcache"] == "hit-semantic"


def test_bad_policy_is_refused_and_the_old_one_stays(own_proxy, policy_file, api_key):
    proxy = own_proxy
    ask(proxy, key=api_key, text=PARAPHRASES[0])
    policy_file.write_text(POLICIES.read_text().replace("threshold: 0.9\n    ttl: 1h", "threshold: 1.7\n    ttl: 1h", 1))
    refused = httpx.post(f"{proxy.url}/admin/reload")
    assert refused.status_code == 400
    assert "categories.code.threshold" in refused.json()["error"]["message"]
    assert ask(proxy, key=api_key, text=PARAPHRASES[1])[0]["x-catcache"] == "hit-semantic"


def test_hot_reload_applies_a_new_threshold(own_proxy, policy_file, api_key):
    proxy = own_proxy
    ask(proxy, key=api_key, text=PARAPHRASES[0])
    policy_file.write_text(POLICIES.read_text().replace("threshold: 0.9\n    ttl: 1h", "threshold: 0.999\n    ttl: 1h", 1))
    deadline = time.monotonic() + 10
    while ask(proxy, key=api_key, text=PARAPHRASES[1])[0]["x-catcache"] != "miss":
        assert time.monotonic() < deadline, "the edited policy file was not picked up"
        time.sleep(0.3)


def test_near_miss_is_answered_in_context_by_the_small_backend(proxy_factory, fresh_backend, tmp_path, api_key):
    policy = tmp_path / "ic.yaml"
    policy.write_text(f"""
version: 1
backends:
  small: {{url: "{fresh_backend.base_url}", role: small, model: small-model}}
categories:
  default:
    threshold: 0.99
    ic: {{low: 0.5, k: 2, backend: small}}
""")
    proxy = proxy_factory(policies=policy)
    ask(proxy, key=api_key, text="How do I reverse a list in Python?")
    api = openai.OpenAI(base_url=proxy.base_url, api_key=api_key, max_retries=0)
    raw = api.chat.completions.with_raw_response.create(
        model="test-model", messages=[{"role": "user", "content": "How do I sort a list in Python?"}])
    assert raw.headers["x-catcache"] == "ic"
    assert 0.5 <= float(raw.headers["x-catcache-similarity"]) < 0.99
    assert raw.parse().model == "small-model"
    assert ask(proxy, key=api_key, text="How do I sort a list in Python?")[0]["x-catcache"] == "ic", \
        "IC answers come from a small model: they are not stored"


def test_near_miss_goes_to_the_large_backend_when_the_small_one_is_down(proxy_factory, fresh_backend, tmp_path,
                                                                        api_key):
    policy = tmp_path / "ic-down.yaml"
    policy.write_text("""
version: 1
backends:
  small: {url: "http://127.0.0.1:9/v1", role: small, model: small-model}
categories:
  default:
    threshold: 0.99
    ic: {low: 0.5, k: 2, backend: small}
""")
    proxy = proxy_factory(policies=policy)
    ask(proxy, key=api_key, text="How do I reverse a list in Python?")
    api = openai.OpenAI(base_url=proxy.base_url, api_key=api_key, max_retries=0)
    raw = api.chat.completions.with_raw_response.create(
        model="test-model", messages=[{"role": "user", "content": "How do I sort a list in Python?"}])
    assert raw.status_code == 200 and raw.headers["x-catcache"] == "miss"
    assert raw.parse().model == "test-model" and fresh_backend.calls() == 2


def test_a_second_proxy_learns_entries_through_redis(proxy_factory, redis_url, clean_redis, api_key):
    first = proxy_factory(policies=POLICIES, redis_url=redis_url)
    second = proxy_factory(policies=POLICIES, redis_url=redis_url)
    _, answer = ask(first, key=api_key, text=PARAPHRASES[0])
    deadline = time.monotonic() + 10
    while httpx.get(f"{second.url}/healthz").json()["index"].get("code", 0) < 1:
        assert time.monotonic() < deadline, "the second proxy did not follow the event stream"
        time.sleep(0.1)
    headers, again = ask(second, key=api_key, text=PARAPHRASES[1])
    assert headers["x-catcache"] == "hit-semantic" and again == answer
