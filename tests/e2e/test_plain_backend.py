"""catcache in front of a plain `http.server` backend (no TCP_NODELAY, head and body written apart)."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from catcache.testing.plain_backend import PlainBackend


@pytest.fixture(scope="module")
def plain() -> Iterator[PlainBackend]:
    with PlainBackend() as backend:
        yield backend


def test_misses_and_hits_stream_and_not_through_the_sdk(proxy_factory, plain: PlainBackend, api_key: str) -> None:
    proxy = proxy_factory(backend_url=plain.base_url)
    client = openai.OpenAI(base_url=proxy.base_url, api_key=api_key, max_retries=0)
    question = [{"role": "user", "content": "What is the tallest mountain in Africa?"}]

    raw = client.chat.completions.with_raw_response.create(model="test-model", messages=question)
    answer = raw.parse().choices[0].message.content
    assert raw.headers["x-catcache"] == "miss" and answer.startswith("Answer #")

    stream = client.chat.completions.create(model="test-model", messages=question, stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices) == answer

    other = [{"role": "user", "content": "Who wrote the novel Things Fall Apart?"}]
    streamed = client.chat.completions.create(model="test-model", messages=other, stream=True,
                                              stream_options={"include_usage": True})
    chunks = list(streamed)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("Answer #") and chunks[-1].usage is not None
    again = client.chat.completions.with_raw_response.create(model="test-model", messages=other)
    assert again.headers["x-catcache"] == "hit-exact" and again.parse().choices[0].message.content == text
    assert plain.calls("/v1/chat/completions") == 2
