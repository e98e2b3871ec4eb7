"""`catcache serve --backend local`: the bundled SmolLM2 answers through the proxy, as the OpenAI SDK sees it."""

from __future__ import annotations

import pytest
from openai import OpenAI

from catcache.backends.local import LOCAL, local_everywhere, uses_local
from catcache.policy.loader import load_policy
from catcache.testing import ProxyProcess
from catcache.testing.proxy import DEFAULT_POLICIES

MODEL_LOAD_S = 300.0  # reading and dequantising the GGUF: seconds on an idle CPU, minutes on a busy one


POLICY = """
version: 1
backends:
  large: {url: local}
  small: {url: local, role: small}
categories:
  default:
    threshold: 0.99
    ic: {low: 0.6, k: 2, backend: small}
"""


@pytest.fixture(scope="module")
def local_proxy(tmp_path_factory):
    root = tmp_path_factory.mktemp("local")
    (root / "policies.yaml").write_text(POLICY)
    proxy = ProxyProcess(LOCAL, root / "policies.yaml", root / "data")
    try:
        yield proxy.start(timeout=MODEL_LOAD_S)
    finally:
        proxy.stop()


def test_backend_local_answers_everything_with_the_bundled_model():
    policy = load_policy(DEFAULT_POLICIES)
    assert not uses_local(policy, "http://vllm:8000/v1")
    assert uses_local(policy, LOCAL)
    assert {b.url for b in local_everywhere(policy.backends).values()} == {LOCAL}


def test_a_real_answer_then_a_hit(local_proxy, api_key):
    client = OpenAI(base_url=f"{local_proxy.url}/v1", api_key=api_key)
    ask = dict(model="any", messages=[{"role": "user", "content": "What is the capital of France?"}],
               max_tokens=12, temperature=0)
    first = client.chat.completions.with_raw_response.create(**ask)
    answer = first.parse()
    assert first.headers["x-catcache"] == "miss"
    assert "Paris" in answer.choices[0].message.content
    assert answer.usage.prompt_tokens > 5 and 0 < answer.usage.completion_tokens <= 12
    again = client.chat.completions.with_raw_response.create(**ask)
    assert again.headers["x-catcache"] == "hit-exact"
    assert again.parse().choices[0].message.content == answer.choices[0].message.content


def test_streams_completions_with_usage(local_proxy, api_key):
    client = OpenAI(base_url=f"{local_proxy.url}/v1", api_key=api_key)
    chunks = list(client.completions.create(model="any", prompt="1, 2, 3, 4,", max_tokens=6, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert "5" in text
    assert chunks[-1].usage.completion_tokens == 6


def test_a_near_miss_is_answered_in_context_by_the_bundled_model(local_proxy, api_key):
    client = OpenAI(base_url=f"{local_proxy.url}/v1", api_key=api_key)

    def ask(text: str):
        return client.chat.completions.with_raw_response.create(
            model="any", messages=[{"role": "user", "content": text}], max_tokens=12, temperature=0)

    assert ask("Who wrote the novel Pride and Prejudice?").headers["x-catcache"] == "miss"
    near = ask("Who is the author of Pride and Prejudice?")
    assert near.headers["x-catcache"] == "ic"
    assert "Austen" in near.parse().choices[0].message.content
