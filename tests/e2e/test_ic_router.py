"""The IC router through `catcache serve`: a near miss goes large when the small model is unsure,
the large backend idle, or the small backend full."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from catcache.testing import TestBackend


def router_policy(folder: Path, small_url: str, knob: str) -> Path:
    """A policy whose `default` near misses go to the small backend at `small_url`, under one router `knob`."""
    policy = folder / "router.yaml"
    policy.write_text(f"""
version: 1
backends:
  small: {{url: "{small_url}", role: small, model: small-model}}
categories:
  default:
    threshold: 0.99
    ic: {{low: 0.5, k: 2, backend: small, {knob}}}
""")
    return policy


@pytest.mark.parametrize("knob", ["min_logprob: -1.0", "busy_at: 1"], ids=["small-model-unsure", "large-backend-idle"])
def test_near_miss_goes_large_when_the_router_says_so(proxy_factory, fresh_backend, tmp_path, api_key, knob):
    """The test backend sends no log-probabilities (never sure), and nothing else keeps the large one busy."""
    proxy = proxy_factory(policies=router_policy(tmp_path, fresh_backend.base_url, knob))
    api = openai.OpenAI(base_url=proxy.base_url, api_key=api_key, max_retries=0)
    api.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "How do I reverse a list in Python?"}])
    raw = api.chat.completions.with_raw_response.create(
        model="test-model", messages=[{"role": "user", "content": "How do I sort a list in Python?"}])
    assert raw.headers["x-catcache"] == "miss"
    assert raw.parse().model == "test-model"


def test_near_miss_goes_large_while_the_small_backend_is_full(proxy_factory, fresh_backend, tmp_path, api_key):
    """A small model with a queue answers slower than the large one: past `small_full_at` it is skipped."""
    with TestBackend(think_ms=3000) as slow_small:
        proxy = proxy_factory(policies=router_policy(tmp_path, slow_small.base_url, "small_full_at: 1"))
        api = openai.OpenAI(base_url=proxy.base_url, api_key=api_key, max_retries=0)
        api.chat.completions.create(model="test-model",
                                    messages=[{"role": "user", "content": "How do I reverse a list in Python?"}])

        def near_miss(text: str) -> tuple[str, str | None]:
            raw = api.chat.completions.with_raw_response.create(
                model="test-model", messages=[{"role": "user", "content": text}])
            return raw.headers["x-catcache"], raw.headers.get("x-catcache-verdict")

        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(near_miss, "How do I sort a list in Python?")
            time.sleep(1.0)
            second = pool.submit(near_miss, "How do I shuffle a list in Python?")
            assert first.result() == ("ic", None)
            outcome, verdict = second.result()
        assert outcome == "miss" and verdict.startswith("ic: small backend full")
        assert slow_small.calls("/v1/chat/completions") == 1
