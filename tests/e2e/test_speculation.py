"""Speculative forwarding through `catcache serve`: a miss goes to the backend before its lookup
ends, a hit found before the backend's first byte closes that call, and single flight, tenants,
no-store/no-cache, IC and streaming keep their meaning."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import yaml

from catcache.policy.loader import PolicyError, parse_policy

from catcache.testing import TestBackend

POLICY = {
    "version": 1,
    "tenancy": {"by": "api_key"},
    "classifier": {"min_confidence": 0.3, "default": "default"},
    "backends": {"large": {"url": "http://127.0.0.1:9/v1", "role": "large"},
                 "small": {"url": "http://127.0.0.1:9/v1", "role": "small"}},
    "speculation": {"max_in_flight": 2},
    "categories": {
        "public": {"match": {"header": ["public"]}, "shared": True, "threshold": 0.9, "speculate": "always"},
        "careful": {"match": {"header": ["careful"]}, "threshold": 0.9, "speculate": "never"},
        "offload": {"match": {"header": ["offload"]}, "threshold": 0.97, "speculate": "always",
                    "ic": {"low": 0.5, "backend": "small", "busy_at": 0}},
        "default": {"threshold": 0.9, "speculate": "always"},
    },
}
# `always`: whether speculation pays is learnt under `auto` (RaceClock, tests/proxy/test_speculation.py),
# and this backend's think time changes from test to test.
SLOW_S = 1.5  # the backend's think time when a hit must win the race: far above one embedding


@pytest.fixture(scope="module")
def slow_backend():
    with TestBackend() as server:
        yield server


@pytest.fixture(scope="module")
def proxy(module_proxy_factory, slow_backend, tmp_path_factory):
    path = tmp_path_factory.mktemp("speculation") / "policies.yaml"
    path.write_text(yaml.safe_dump(POLICY))
    return module_proxy_factory(policies=path, backend_url=slow_backend.base_url)


@pytest.fixture
def thinking(slow_backend):
    """The module's backend, its counts zeroed and its think time back to none after the test."""
    slow_backend.reset()
    yield slow_backend
    slow_backend.state.think_s = 0


def chat(proxy, key: str, text: str, headers=None, **params):
    raw = openai.OpenAI(base_url=proxy.base_url, api_key=key, max_retries=0).chat.completions.with_raw_response.create(
        model="test-model", messages=[{"role": "user", "content": text}], extra_headers=headers, **params)
    return raw.headers, raw.parse()


def speculation(proxy, category: str | None, event: str) -> float:
    """A speculation counter of one category, or of all (None: a lookup that failed under load
    counts its call under "-")."""
    label = re.escape(category) if category is not None else '[^"]*'
    found = re.findall(rf'catcache_speculation_total{{category="{label}",event="{event}"}} (\S+)',
                       httpx.get(f"{proxy.url}/metrics").text)
    return sum(map(float, found))


def eventually(check, timeout: float = 10.0, message=lambda: "not within the time allowed"):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, message()
        time.sleep(0.05)


def test_policy_refuses_an_unknown_mode():
    with pytest.raises(PolicyError, match="speculate"):
        parse_policy("categories:\n  default: {speculate: sometimes}\n", "p.yaml")
    assert parse_policy("categories:\n  default: {speculate: always}\n", "p.yaml").categories["default"].speculate == "always"
    with pytest.raises(PolicyError, match="max_in_flight"):
        parse_policy("speculation: {max_in_flight: 0}\n", "p.yaml")


def test_a_miss_is_sent_at_once_stored_and_then_served(proxy, thinking, api_key):
    sent = speculation(proxy, "default", "sent")
    headers, first = chat(proxy, api_key, "What is the tallest mountain on Earth?")
    assert headers["x-catcache"] == "miss"
    assert speculation(proxy, "default", "sent") == sent + 1
    # Stored in the background once the lookup has ended, with its vector: exact and semantic hits follow.
    eventually(lambda: chat(proxy, api_key, "What is the tallest mountain on Earth?")[0]["x-catcache"] == "hit-exact")
    assert thinking.calls("/v1/chat/completions") == 1
    # An answer that came before the lookup ended is recorded once the lookup has named its category.
    assert 'catcache_requests_total{category="-"' not in httpx.get(f"{proxy.url}/metrics").text
    thinking.state.think_s = SLOW_S  # a backend slower than the lookup, as any LLM is: the paraphrase is a hit
    headers, again = chat(proxy, api_key, "what is the tallest mountain on earth?")
    assert headers["x-catcache"] == "hit-semantic"
    assert again.choices[0].message.content == first.choices[0].message.content


def test_a_hit_found_before_the_first_byte_closes_the_call(proxy, thinking, api_key):
    question = "Which planet has the most moons in the solar system?"
    _, first = chat(proxy, api_key, question)
    eventually(lambda: chat(proxy, api_key, question)[0]["x-catcache"] == "hit-exact")
    cancelled = speculation(proxy, "default", "cancelled")
    tokens = speculation(proxy, "default", "cancelled_prompt_tokens")
    thinking.state.think_s = SLOW_S
    started = time.perf_counter()
    headers, hit = chat(proxy, api_key, question.lower())
    assert headers["x-catcache"] == "hit-semantic"
    assert time.perf_counter() - started < SLOW_S, "the hit did not wait for the backend"
    assert hit.choices[0].message.content == first.choices[0].message.content
    assert speculation(proxy, "default", "cancelled") == cancelled + 1
    assert speculation(proxy, "default", "cancelled_prompt_tokens") > tokens
    assert thinking.calls("/v1/chat/completions") == 2, "the raced call reached the backend, and was closed"


def test_a_stream_streams_on_and_a_streamed_hit_wins(proxy, thinking, api_key):
    client = openai.OpenAI(base_url=proxy.base_url, api_key=api_key, max_retries=0)
    question = [{"role": "user", "content": "How many bones are in the adult human body?"}]
    chunks = list(client.chat.completions.create(model="test-model", messages=question, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].choices[0].finish_reason == "stop"
    eventually(lambda: chat(proxy, api_key, question[0]["content"])[0]["x-catcache"] == "hit-exact")
    thinking.state.think_s = SLOW_S  # headers come at once, the first event only after the think time
    cancelled = speculation(proxy, "default", "cancelled")
    raw = client.chat.completions.with_raw_response.create(
        model="test-model", messages=[{"role": "user", "content": question[0]["content"].lower()}], stream=True)
    assert raw.headers["x-catcache"] == "hit-semantic"
    assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices) == text
    assert speculation(proxy, "default", "cancelled") == cancelled + 1


def test_tenants_stay_apart(proxy, thinking, api_key):
    question = "What is the boiling point of water at sea level?"
    chat(proxy, api_key, question)
    eventually(lambda: chat(proxy, api_key, question)[0]["x-catcache"] == "hit-exact")
    thinking.state.think_s = 0.2
    other = api_key + "-other"
    cancelled = speculation(proxy, "default", "cancelled")
    headers, _ = chat(proxy, other, question.lower())
    assert headers["x-catcache"] == "miss", "another tenant's entry is never served"
    assert speculation(proxy, "default", "cancelled") == cancelled
    headers, _ = chat(proxy, other + "-2", question.lower() + " ", headers={"x-catcache-category": "public"})
    assert headers["x-catcache"] == "miss"


def test_no_store_is_never_speculated_and_no_cache_always_answers_from_the_backend(proxy, thinking, api_key):
    sent = speculation(proxy, "default", "sent")
    headers, _ = chat(proxy, api_key, "Who wrote War and Peace?", headers={"cache-control": "no-store"})
    assert headers["x-catcache"] == "bypass"
    assert speculation(proxy, "default", "sent") == sent
    question = "Who painted the Mona Lisa?"
    chat(proxy, api_key, question)
    eventually(lambda: chat(proxy, api_key, question)[0]["x-catcache"] == "hit-exact")
    thinking.state.think_s = 0.3
    headers, _ = chat(proxy, api_key, question, headers={"cache-control": "no-cache"})
    assert headers["x-catcache"] == "miss"
    assert speculation(proxy, "default", "sent") == sent + 2


def test_single_flight_sends_one_call_for_identical_misses(proxy, thinking, api_key):
    thinking.state.think_s = 0.5
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: chat(proxy, api_key, "What is the capital of Australia?"), range(4)))
    assert len({a.choices[0].message.content for _, a in answers}) == 1
    assert thinking.calls("/v1/chat/completions") == 1


def test_never_is_not_speculated(proxy, thinking, api_key):
    headers, _ = chat(proxy, api_key, "Name a prime number above one hundred.", headers={"x-catcache-category": "careful"})
    assert headers["x-catcache"] == "miss" and speculation(proxy, "careful", "sent") == 0
    # Far from the question above: a neighbour found before the backend's answer would be a hit.
    headers, _ = chat(proxy, api_key, "Who designed the Eiffel Tower?", headers={"x-catcache-category": "public"})
    assert headers["x-catcache"] == "miss" and speculation(proxy, "public", "sent") >= 1


def test_a_near_miss_the_small_model_cannot_take_gets_the_large_answer(proxy, thinking, api_key):
    """`offload` has an IC band whose small backend is down: the speculated call to the large
    backend answers the near miss, and none is counted wasted."""
    offload = {"x-catcache-category": "offload"}
    chat(proxy, api_key, "What is the population of Canada?", headers=offload)
    eventually(lambda: chat(proxy, api_key, "What is the population of Canada?", headers=offload)[0]["x-catcache"]
               == "hit-exact")
    thinking.state.think_s = 0.3
    sent = speculation(proxy, "offload", "sent")
    headers, answer = chat(proxy, api_key, "What is the population of Canada in 2020?", headers=offload)
    assert headers["x-catcache"] == "miss" and answer.choices[0].message.content
    assert float(headers["x-catcache-similarity"]) >= 0.5, "the question was a near miss in the IC band"
    assert speculation(proxy, "offload", "sent") == sent + 1
    assert speculation(proxy, "offload", "cancelled") == 0


def in_flight(proxy) -> float:
    return float(re.search(r'catcache_backend_in_flight{backend="large"} (\S+)', httpx.get(f"{proxy.url}/metrics").text)[1])


def test_none_is_sent_while_the_backend_is_busy(proxy, thinking, api_key):
    eventually(lambda: in_flight(proxy) == 0, message=lambda: f"{in_flight(proxy)} calls left in flight")
    thinking.state.think_s = 2.0
    sent = speculation(proxy, None, "sent")
    with ThreadPoolExecutor(3) as pool:
        busy = []
        for i, question in enumerate(["Slow question about the Nile?", "Slow question about the Amazon?"], 1):
            busy.append(pool.submit(chat, proxy, api_key, question))  # one at a time: each sees the other's call
            eventually(lambda: in_flight(proxy) == i, timeout=30,
                       message=lambda: f"in flight {in_flight(proxy)}, sent {speculation(proxy, None, 'sent') - sent}")
        eventually(lambda: speculation(proxy, None, "sent") == sent + 2, timeout=30,
                   message=lambda: f"sent {speculation(proxy, None, 'sent') - sent} of the two slow questions")
        sent = speculation(proxy, None, "sent")
        headers, _ = chat(proxy, api_key, "A third question about lakes, while two are in flight?")
        assert headers["x-catcache"] == "miss"
        assert speculation(proxy, None, "sent") == sent, "max_in_flight: 2 leaves the third alone"
        for future in busy:
            future.result()
