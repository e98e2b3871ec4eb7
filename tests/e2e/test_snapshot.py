"""`catcache serve` saves the index at shutdown and starts again from the snapshot."""

from __future__ import annotations


def test_catcache_serve_saves_at_shutdown_and_restarts_from_the_snapshot(proxy_factory, api_key: str) -> None:
    import openai

    proxy = proxy_factory()
    client = openai.OpenAI(base_url=proxy.base_url, api_key=api_key, max_retries=0)
    question = [{"role": "user", "content": "How do I reverse a list in Python?"}]
    first = client.chat.completions.create(model="test-model", messages=question).choices[0].message.content
    proxy.restart()
    assert "loaded semantic indexes from the snapshot" in proxy.log_tail(200)
    client = openai.OpenAI(base_url=proxy.base_url, api_key=api_key, max_retries=0)
    lower = [{"role": "user", "content": "how do i reverse a list in python?"}]  # not an exact hit
    raw = client.chat.completions.with_raw_response.create(model="test-model", messages=lower)
    assert raw.headers["x-catcache"] == "hit-semantic" and raw.parse().choices[0].message.content == first
