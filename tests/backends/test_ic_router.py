"""The IC router: a near miss goes to the small backend only when the examples agree, the small
model is sure of its answer, the large backend is busy enough and the small one is not full; otherwise
to the large one."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from catcache.backends.ic import agreement, confidence, confident_request, example_messages, within_budget
from catcache.policy.loader import PolicyError, parse_policy
from catcache.reports.buckets import SCALARS
from catcache.reports.stats import summarize
from catcache.store.documents import Document

from catcache.testing import TestBackend


def doc(answer: str, n: int = 0) -> Document:
    return Document(f"d{n}", "chat", "m", "factual", "", f"question {n}",
                    {"choices": [{"message": {"role": "assistant", "content": answer}}]}, created=float(n))


def test_agreement_is_one_over_the_distinct_answers():
    assert agreement([doc("Paris", 0), doc("paris ", 1)]) == 1.0
    assert agreement([doc("Paris", 0), doc("Lyon", 1), doc("Paris", 2)]) == 0.5


def test_examples_fit_the_budget_most_relevant_first_in_a_stable_order():
    near, far, huge = doc("Paris", 2), doc("Lyon", 1), doc("x" * 4000, 0)
    chosen = within_budget([near, huge, far], budget_tokens=40)
    assert chosen == [near, far], "the long example is skipped, the next relevant one still fits"
    assert [m["content"] for m in example_messages(chosen)] == ["question 1", "Lyon", "question 2", "Paris"]


def test_confidence_reads_chat_and_completions_logprobs():
    chat = {"choices": [{"logprobs": {"content": [{"token": "a", "logprob": -0.5}, {"token": "b", "logprob": -1.5}]}}]}
    completions = {"choices": [{"logprobs": {"tokens": ["a"], "token_logprobs": [-0.25]}}]}
    assert confidence(chat) == -1.0 and confidence(completions) == -0.25
    assert confidence({"choices": [{"logprobs": None}]}) is None


def test_confident_request_asks_whole_with_logprobs():
    asked = confident_request({"stream": True, "stream_options": {"include_usage": True}, "prompt": "x"}, "completions")
    assert asked == {"stream": False, "prompt": "x", "logprobs": 1}


def test_reports_count_what_ic_answered_and_what_it_cost():
    ic = dict.fromkeys(SCALARS, 0.0) | {"requests": 2, "prompt_tokens": 300, "completion_tokens": 20, "cost_usd": 0.5}
    miss = dict.fromkeys(SCALARS, 0.0) | {"requests": 3, "prompt_tokens": 30, "cost_usd": 2.0}
    summary = summarize({"ic": ic, "miss": miss})
    assert (summary["ic_answers"], summary["ic_tokens"], summary["ic_cost_usd"]) == (2, 320, 0.5)


def test_router_knobs_are_validated():
    text = "categories:\n  default:\n    threshold: 0.99\n    ic: {low: 0.9, backend: small, %s}\nbackends:\n  small: {url: http://s/v1}\n"
    assert parse_policy(text % "min_logprob: -0.4, min_agreement: 0.5, busy_at: 4", "p").categories["default"].ic.busy_at == 4
    with pytest.raises(PolicyError, match="min_logprob"):
        parse_policy(text % "min_logprob: 0.3", "p")
    with pytest.raises(PolicyError, match="min_agreement"):
        parse_policy(text % "min_agreement: 2", "p")
    with pytest.raises(PolicyError, match="small_full_at"):
        parse_policy(text % "small_full_at: 0", "p")


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
