"""The IC router: a near miss goes to the small backend only when the examples agree, the small
model is sure of its answer, the large backend is busy enough and the small one is not full; otherwise
to the large one."""

from __future__ import annotations

import pytest

from catcache.backends.ic import agreement, confidence, confident_request, example_messages, within_budget
from catcache.policy.loader import PolicyError, parse_policy
from catcache.reports.buckets import SCALARS
from catcache.reports.stats import summarize
from catcache.store.documents import Document


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
