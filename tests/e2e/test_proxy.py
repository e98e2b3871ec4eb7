"""The proxy as an app developer sees it: the official openai SDK pointed at catcache."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import httpx
import openai
import pytest

from catcache.store.documents import doc_key
from catcache.testing import TestBackend, free_port, wait_http

POLICIES = Path(__file__).parents[1] / "data" / "policies-e2e.yaml"
QUESTION = [{"role": "user", "content": "What is the tallest mountain on Earth?"}]


@pytest.fixture(scope="module")
def proxy(module_proxy_factory):
    """One proxy for the module; each test keeps to its own tenant through `api_key`."""
    return module_proxy_factory(policies=POLICIES)


def client(proxy, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.base_url, api_key=key, max_retries=0)


def chat(proxy, key: str, messages=QUESTION, headers=None, **params):
    raw = client(proxy, key).chat.completions.with_raw_response.create(
        model="test-model", messages=messages, extra_headers=headers, **params)
    return raw.headers, raw.parse()


def collect(stream) -> tuple[str, list]:
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


def test_miss_then_exact_hit(proxy, fresh_backend, api_key):
    headers, first = chat(proxy, api_key)
    assert headers["x-catcache"] == "miss"
    headers, second = chat(proxy, api_key)
    assert headers["x-catcache"] == "hit-exact"
    assert second.choices[0].message.content == first.choices[0].message.content
    assert second.usage.total_tokens == first.usage.total_tokens
    assert fresh_backend.calls("/v1/chat/completions") == 1


def test_access_log_is_one_json_object_a_line(proxy, api_key):
    chat(proxy, api_key, messages=[{"role": "user", "content": "Which river is the longest?"}])
    records = []
    for line in proxy.log_tail(400).splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))  # a prefix (time, level) would make this line fail
    assert any(r["outcome"] == "miss" and r["category"] for r in records)


def test_formatting_and_dropped_fields_do_not_matter(proxy, fresh_backend, api_key):
    chat(proxy, api_key, messages=[{"role": "user", "content": "What  is the tallest\nmountain on Earth? "}], temperature=0)
    headers, _ = chat(proxy, api_key, messages=[{"content": "What is the tallest mountain on Earth?", "role": "user"}],
                      temperature=0.0, user="someone")
    assert headers["x-catcache"] == "hit-exact"
    headers, _ = chat(proxy, api_key, temperature=0.5)
    assert headers["x-catcache"] == "miss", "a sampling parameter changes the answer"


def test_renamed_python_code_is_an_exact_hit(proxy, fresh_backend, api_key):
    first = "Why is this slow?\n```python\ndef total(values):\n    # add them up\n    s = 0\n    for v in values:\n        s += v\n    return s\n```"
    second = "Why is this slow?\n```python\ndef add_all(items):\n    acc = 0\n\n    for item in items:\n        acc += item\n    return acc\n```"
    chat(proxy, api_key, messages=[{"role": "user", "content": first}])
    headers, _ = chat(proxy, api_key, messages=[{"role": "user", "content": second}])
    assert headers["x-catcache"] == "hit-exact"
    assert headers["x-catcache-category"] == "code"


def test_stream_miss_relayed_and_replayed(proxy, fresh_backend, api_key):
    api = client(proxy, api_key)
    with api.chat.completions.with_streaming_response.create(
            model="test-model", messages=QUESTION, stream=True) as response:
        assert response.headers["x-catcache"] == "miss"
        text, chunks = collect(response.parse())
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks), "the usage chunk catcache asked for is not shown uninvited"
    with api.chat.completions.with_streaming_response.create(
            model="test-model", messages=QUESTION, stream=True, stream_options={"include_usage": True}) as response:
        assert response.headers["x-catcache"] == "hit-exact"
        replayed, chunks = collect(response.parse())
    assert replayed == text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    headers, whole = chat(proxy, api_key)
    assert headers["x-catcache"] == "hit-exact" and whole.choices[0].message.content == text
    assert fresh_backend.calls("/v1/chat/completions") == 1


def test_non_stream_answer_replays_as_stream(proxy, fresh_backend, api_key):
    _, whole = chat(proxy, api_key)
    stream = client(proxy, api_key).chat.completions.create(model="test-model", messages=QUESTION, stream=True)
    text, _ = collect(stream)
    assert text == whole.choices[0].message.content


def test_truncated_stream_is_not_cached(proxy, fresh_backend, api_key):
    api = client(proxy, api_key)
    with pytest.raises(openai.APIConnectionError):
        collect(api.chat.completions.create(model="test-model", messages=QUESTION, stream=True,
                                            extra_headers={"x-test-truncate": "1"}))
    headers, _ = chat(proxy, api_key)
    assert headers["x-catcache"] == "miss"


async def test_async_client_and_completions(proxy, fresh_backend, api_key):
    api = openai.AsyncOpenAI(base_url=proxy.base_url, api_key=api_key, max_retries=0)
    first = await api.completions.create(model="test-model", prompt="Say hello", max_tokens=20)
    raw = await api.completions.with_raw_response.create(model="test-model", prompt="Say hello", max_tokens=20)
    assert raw.headers["x-catcache"] == "hit-exact"
    assert raw.parse().choices[0].text == first.choices[0].text
    stream = await api.completions.create(model="test-model", prompt="Say hello", max_tokens=20, stream=True)
    assert "".join([c.choices[0].text async for c in stream if c.choices]) == first.choices[0].text
    assert fresh_backend.calls("/v1/completions") == 1


def test_other_paths_pass_through(proxy, fresh_backend, api_key):
    api = client(proxy, api_key)
    assert [m.id for m in api.models.list()]
    assert len(api.embeddings.create(model="test-embed", input="hello").data[0].embedding) > 0
    echoed = httpx.put(f"{proxy.base_url}/files/abc?purpose=x", content=b"raw-bytes",
                       headers={"x-custom": "kept", "authorization": "Bearer k"}).json()
    assert echoed["method"] == "PUT" and echoed["query"] == "purpose=x" and echoed["body"] == "raw-bytes"
    assert echoed["headers"]["x-custom"] == "kept"


def test_bad_input_gets_openai_errors(proxy, fresh_backend, api_key):
    broken = httpx.post(f"{proxy.base_url}/chat/completions", content=b"{not json",
                        headers={"content-type": "application/json"})
    assert broken.status_code == 400 and broken.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as missing:
        client(proxy, api_key).chat.completions.create(model="test-model", messages="not a list")
    assert missing.value.body["param"] == "messages"
    assert fresh_backend.calls("/v1/chat/completions") == 0


def test_backend_errors_pass_through_and_are_never_cached(proxy, fresh_backend, api_key):
    for _ in range(2):
        with pytest.raises(openai.InternalServerError) as error:
            chat(proxy, api_key, headers={"x-test-status": "503"})
        assert error.value.status_code == 503
    assert fresh_backend.calls("/v1/chat/completions") == 2


def test_unreachable_backend_is_a_502(proxy_factory, api_key):
    proxy = proxy_factory(policies=POLICIES, backend_url=f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(openai.APIStatusError) as error:
        chat(proxy, api_key)
    assert error.value.status_code == 502 and error.value.body["code"] == "backend_unreachable"


def test_cache_control(proxy, fresh_backend, api_key):
    headers, _ = chat(proxy, api_key, headers={"cache-control": "no-store"})
    assert headers["x-catcache"] == "bypass"
    headers, fresh = chat(proxy, api_key, headers={"cache-control": "no-cache"})
    assert headers["x-catcache"] == "miss"
    headers, cached = chat(proxy, api_key)
    assert headers["x-catcache"] == "hit-exact" and cached.choices[0].message.content == fresh.choices[0].message.content
    headers, _ = chat(proxy, api_key, headers={"cache-control": "no-store"})
    assert headers["x-catcache"] == "bypass"


def test_tenants_are_isolated_unless_shared(proxy, fresh_backend, api_key):
    chat(proxy, api_key + "-alice")
    assert chat(proxy, api_key + "-bob")[0]["x-catcache"] == "miss"
    assert chat(proxy, api_key + "-alice")[0]["x-catcache"] == "hit-exact"
    public, question = {"x-catcache-category": "public"}, [{"role": "user", "content": f"Public: {api_key}"}]
    chat(proxy, api_key + "-alice", messages=question, headers=public)
    headers, _ = chat(proxy, api_key + "-bob", messages=question, headers=public)
    assert headers["x-catcache"] == "hit-exact" and headers["x-catcache-category"] == "public"


def test_uncacheable_category_is_never_stored(proxy, fresh_backend, api_key):
    secret = [{"role": "user", "content": "What is my password for the bank?"}]
    for _ in range(2):
        headers, _ = chat(proxy, api_key, messages=secret)
        assert headers["x-catcache"] == "bypass" and headers["x-catcache-category"] == "private"
    assert fresh_backend.calls("/v1/chat/completions") == 2


def test_n_above_one_is_not_cached(proxy, fresh_backend, api_key):
    for _ in range(2):
        headers, answer = chat(proxy, api_key, n=2)
        assert headers["x-catcache"] == "bypass" and len(answer.choices) == 2


async def test_single_flight_collapses_concurrent_misses(proxy_factory):
    with TestBackend(think_ms=400) as slow:
        proxy = proxy_factory(policies=POLICIES, backend_url=slow.base_url)
        api = openai.AsyncOpenAI(base_url=proxy.base_url, api_key="sk-same", max_retries=0)

        async def ask(stream: bool) -> str:
            if stream:
                chunks = await api.chat.completions.create(model="m", messages=QUESTION, stream=True)
                return "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
            return (await api.chat.completions.create(model="m", messages=QUESTION)).choices[0].message.content

        answers = await asyncio.gather(*(ask(stream=i % 2 == 0) for i in range(8)))
        assert len(set(answers)) == 1
        assert slow.calls("/v1/chat/completions") == 1


def test_restart_keeps_answers(proxy, fresh_backend, api_key):
    _, first = chat(proxy, api_key)
    proxy.restart()
    headers, again = chat(proxy, api_key)
    assert headers["x-catcache"] == "hit-exact"
    assert again.choices[0].message.content == first.choices[0].message.content


def test_second_serve_on_the_same_data_dir_is_refused(proxy, backend, api_key):
    other = subprocess.run(["catcache", "serve", "--backend", backend.base_url, "--port", str(free_port()),
                            "--data-dir", str(proxy.data_dir), "--policies", str(POLICIES)],
                           capture_output=True, text=True, timeout=60)
    assert other.returncode != 0 and "in use" in other.stderr


def test_healthz(proxy, api_key):
    health = httpx.get(f"{proxy.url}/healthz").json()
    assert health["status"] == "ok" and health["redis"] == "up"
    wait_http(f"{proxy.url}/healthz")


def test_stream_is_relayed_as_the_backend_sends_it(proxy_factory, api_key):
    """Not buffered: the first chunk arrives long before the backend finishes its answer."""
    with TestBackend(tokens_per_s=8) as slow:
        proxy = proxy_factory(policies=POLICIES, backend_url=slow.base_url)
        started = time.monotonic()
        arrivals = []
        for chunk in client(proxy, api_key).chat.completions.create(model="m", messages=QUESTION, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append(time.monotonic() - started)
    assert len(arrivals) >= 5
    assert arrivals[0] < (arrivals[-1] - arrivals[0]) / 2


def test_bad_stream_options_is_a_400_in_openai_shape(proxy, api_key):
    response = httpx.post(f"{proxy.base_url}/chat/completions", headers={"authorization": f"Bearer {api_key}"},
                          json={"model": "test-model", "messages": QUESTION, "stream": True, "stream_options": 5})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "stream_options" and error["type"] == "invalid_request_error"
    assert set(error) == {"message", "type", "param", "code"}


def test_a_corrupt_cache_entry_never_becomes_an_error(proxy_factory, redis_url, redis_client, fresh_backend, api_key):
    proxy = proxy_factory(policies=POLICIES, redis_url=redis_url)
    raw = client(proxy, api_key).chat.completions.with_raw_response.create(model="test-model", messages=QUESTION)
    redis_client.hset(doc_key(raw.headers["x-catcache-key"]), "response", b"{not json")
    headers, answer = chat(proxy, api_key)
    assert headers["x-catcache"] in ("bypass", "miss") and answer.choices[0].message.content
    assert fresh_backend.calls("/v1/chat/completions") == 2
