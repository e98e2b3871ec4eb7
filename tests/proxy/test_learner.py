"""The proxy's learner on a real Redis: judged observations move a category's threshold, every
learner on the Redis decides the same, and checks stay within the exploration budget."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest

from catcache.policy.loader import parse_policy
from catcache.proxy.learner import Check, Learner, answer_text
from catcache.store.connect import connect
from catcache.store.learned import LearnedState

POLICY_TEXT = """
backends: {large: {url: "http://127.0.0.1:9/v1"}}
learning: {enabled: true, min_observations: 50, exploration: {most: 0.1, least: 0.02, half_life: 10}}
categories:
  factual: {threshold: 0.95}
  default: {threshold: 0.96}
"""
POLICY = parse_policy(POLICY_TEXT, "policies.yaml")


@pytest.fixture(scope="module")
def embed():
    from catcache.index.embedder import Embedder

    embedder = Embedder()

    async def encode(texts: list[str]) -> np.ndarray:
        return embedder.encode(texts)
    return encode


def reply(text: str) -> dict:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}


def test_answer_text_of_chat_and_completions():
    assert answer_text(reply("Paris")) == "Paris"
    assert answer_text({"choices": [{"text": "Lyon"}]}) == "Lyon"
    assert answer_text({}) == ""


def test_judged_near_misses_move_the_threshold_for_every_learner(redis_url, clean_redis, embed):
    async def scenario() -> tuple[float, float, float]:
        first_client, second_client = connect(redis_url), connect(redis_url)
        first = Learner(LearnedState(first_client), lambda: POLICY, embed)
        second = Learner(LearnedState(second_client), lambda: POLICY, embed)
        before = first.threshold("factual", "date", 0.95)
        similarities = itertools.cycle(np.linspace(0.90, 0.999, 50))
        for i in range(400):
            s = float(next(similarities))
            first.ask("factual", "date", s)
            first.judge_later(Check("factual", "date", s, "It was in 1969.", "near"), reply("it was in 1969"))
        await first.settled()
        await first.sync()
        await second.sync()
        after = (first.threshold("factual", "date", 0.95), second.threshold("factual", "date", 0.95))
        for client in (first_client, second_client):
            await client.aclose()
        return before, *after

    before, first, second = asyncio.run(scenario())
    assert before == 0.95 and first < 0.95 and first == second


def test_wrong_answers_hold_the_prior_and_show_in_the_estimate(redis_url, clean_redis, embed):
    async def scenario() -> Learner:
        client = connect(redis_url)
        learner = Learner(LearnedState(client), lambda: POLICY, embed)
        for i in range(200):
            s = 0.90 + (i % 100) / 1000
            learner.ask("factual", "person", s)
            learner.serve("factual", "person", s)
            cached = "Abraham Lincoln." if i % 5 else "The Eiffel Tower is in Paris."
            learner.judge_later(Check("factual", "person", s, cached, "explore"), reply("Abraham Lincoln"))
        await learner.settled()
        await learner.sync()
        await client.aclose()
        return learner

    learner = asyncio.run(scenario())
    standing = learner.standings()["factual"]
    assert learner.threshold("factual", "person", 0.95) >= 0.95
    assert standing.evidence.observations == 200 and sum(standing.evidence.false) == 40
    assert standing.estimate.low < 0.2 < standing.estimate.high
    assert learner.judged["factual"] == 200


def test_exploration_checks_a_share_of_would_be_hits_that_falls(redis_url, clean_redis, embed):
    async def scenario() -> tuple[int, int]:
        client = connect(redis_url)
        draws = itertools.cycle(i / 100 for i in range(100))
        policy = parse_policy(POLICY_TEXT.replace("half_life: 10", "half_life: 10, mode: miss"), "policies.yaml")
        learner = Learner(LearnedState(client), lambda: policy, embed, chance=lambda: next(draws))
        early = sum(learner.explore("factual") == "miss" for _ in range(100))
        await learner.sync()
        later = sum(learner.explore("factual") == "miss" for _ in range(100))
        await client.aclose()
        return early, later

    early, later = asyncio.run(scenario())
    assert early == 10 and later < early  # 10% at first; after 10 checks (the half-life) half that


def test_shadow_checks_stay_within_their_budget_and_wait_for_room(redis_url, clean_redis, embed):
    async def scenario() -> tuple[int, int, int]:
        client = connect(redis_url)
        learner = Learner(LearnedState(client), lambda: POLICY, embed, chance=lambda: 0.0)  # every draw checks
        learner.requests = 200  # 5% of them: 10 extra calls at most
        busy = sum(learner.explore("factual", room=False) is not None for _ in range(50))
        checked = sum(learner.explore("factual") == "shadow" for _ in range(50))
        learner.requests = 400
        more = sum(learner.explore("factual") == "shadow" for _ in range(50))
        await client.aclose()
        return busy, checked, more

    busy, checked, more = asyncio.run(scenario())
    assert (busy, checked, more) == (0, 10, 10)


def test_exact_hits_checked_again_measure_the_judges_noise_within_the_same_budget(redis_url, clean_redis, embed):
    """Two answers to the very same request that the judge calls different count as its noise, not
    as a false hit: they stay out of the bins, show in the summary, and share the shadow budget."""
    async def scenario() -> tuple[int, dict, int]:
        client = connect(redis_url)
        learner = Learner(LearnedState(client), lambda: POLICY, embed, chance=lambda: 0.0)
        learner.requests = 200  # room for 10 extra calls
        repeats = sum(learner.repeat("factual") for _ in range(6))
        shadows = sum(learner.explore("factual") == "shadow" for _ in range(10))
        for i in range(12):  # a sampling backend's two wordings of one answer, a third of them apart
            fresh = "Canberra is the capital." if i % 3 else "The seat of government lies in the ACT."
            learner.judge_later(Check("factual", "place", 1.0, "Canberra is the capital.", "repeat"), reply(fresh))
        await learner.settled()
        await learner.sync()
        summary = learner.summary()["factual"]
        await client.aclose()
        return repeats + shadows, summary, learner.summary()["factual"]["observations"]

    extra, summary, observations = asyncio.run(scenario())
    assert extra == 10
    assert summary["judge_noise"] == {"checked": 12, "different": 4, "subtracted": pytest.approx(4 / 12, abs=1e-4)}
    assert observations == 0


def test_no_exact_hit_is_checked_again_when_checks_are_misses(redis_url, clean_redis, embed):
    async def scenario() -> bool:
        client = connect(redis_url)
        policy = parse_policy(POLICY_TEXT.replace("half_life: 10", "half_life: 10, mode: miss"), "policies.yaml")
        learner = Learner(LearnedState(client), lambda: policy, embed, chance=lambda: 0.0)
        learner.requests = 200
        found = any(learner.repeat("factual") for _ in range(20))
        await client.aclose()
        return found

    assert not asyncio.run(scenario())
