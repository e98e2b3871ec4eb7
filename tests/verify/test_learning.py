"""The threshold learner: its monotone fit, its rule, its estimate, and the agreement judge."""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest

from catcache.verify import learning
from catcache.verify.judge import AgreementJudge, LlmJudge
from catcache.verify.learning import Evidence, Rule, decide, decreasing_fit, estimate


def test_decreasing_fit_pools_violations_and_fills_gaps():
    fitted = decreasing_fit([0.5, 0.1, 0.3, 0.0, 0.0], [1, 1, 1, 0, 2])
    assert fitted[0] == 0.5 and fitted[1] == fitted[2] == pytest.approx(0.2)
    assert fitted[3] == pytest.approx(0.2)  # no weight: the value below it, which bounds it
    assert fitted[4] == 0.0
    assert all(a >= b for a, b in zip(fitted, fitted[1:]))


def traffic(evidence: Evidence, rate_at, n: int, seed: int = 0, lowest: float = 0.86) -> None:
    """n lookups whose best neighbours are spread over [lowest, 1), each observed and asked."""
    rng = random.Random(seed)
    for _ in range(n):
        s = rng.uniform(lowest, 0.999)
        evidence.ask(s)
        evidence.observe(s, rng.random() >= rate_at(s))


def test_a_handful_of_observations_never_loosens():
    evidence = Evidence()
    traffic(evidence, lambda s: 0.0, 20)
    decision = decide(evidence, 0.95, Rule(min_observations=50))
    assert decision.threshold == 0.95 and not decision.certified


def test_clean_traffic_loosens_to_what_the_bound_certifies():
    evidence = Evidence()
    traffic(evidence, lambda s: 0.0, 2000)
    decision = decide(evidence, 0.95, Rule(target=0.02))
    assert decision.certified and decision.threshold < 0.95 and decision.bound <= 0.02


def test_the_threshold_stops_where_false_hits_begin():
    evidence = Evidence()
    traffic(evidence, lambda s: 0.3 if s < 0.92 else 0.0, 4000)
    decision = decide(evidence, 0.97, Rule(target=0.02))
    assert decision.certified and 0.9 <= decision.threshold < 0.97


def test_a_prior_the_traffic_shows_wrong_is_raised():
    evidence = Evidence()
    traffic(evidence, lambda s: 0.2 if s < 0.97 else 0.0, 3000)
    decision = decide(evidence, 0.90, Rule(target=0.02))
    assert decision.threshold > 0.95


def test_an_unproven_prior_holds():
    """False hits near the target, too few to show the prior wrong: nothing moves."""
    evidence = Evidence()
    traffic(evidence, lambda s: 0.025, 150)
    assert decide(evidence, 0.93, Rule(target=0.02)).threshold == 0.93


def test_estimate_integrates_the_fit_over_what_was_served():
    evidence = Evidence()
    for _ in range(500):
        evidence.observe(0.91, True)
        evidence.observe(0.97, True)
    for _ in range(50):
        evidence.observe(0.91, False)
    for _ in range(100):
        evidence.serve(0.91)
        evidence.serve(0.97)
    evidence.serve(None)  # an exact hit is never false
    found = estimate(evidence)
    assert found.hits == 201
    assert found.rate == pytest.approx(100 * 50 / 550 / 201)
    assert found.low < found.rate < found.high


def test_evidence_round_trips_through_redis_fields():
    evidence = Evidence()
    traffic(evidence, lambda s: 0.1, 100)
    evidence.serve(0.95)
    evidence.explored = 3
    again = Evidence.from_fields({k.encode(): str(v).encode() for k, v in evidence.to_fields().items()})
    assert again == evidence


def test_exploration_decays_but_never_below_its_floor():
    assert learning.exploration_rate(0, 0.1, 0.01) == 0.1
    assert learning.exploration_rate(100, 0.1, 0.01) == 0.05
    assert learning.exploration_rate(1000, 0.1, 0.01) == 0.01


@pytest.fixture(scope="module")
def judge() -> AgreementJudge:
    from catcache.index.embedder import Embedder

    embedder = Embedder()

    async def embed(texts: list[str]) -> np.ndarray:
        return embedder.encode(texts)
    return AgreementJudge(embed, 0.9)


@pytest.mark.parametrize("fresh, cached, same, how", [
    ("Paris!", "paris", True, "text"),
    ("Paris", "It is Paris, in France.", True, "inside"),
    ("Par is", "Paris", False, "embedding"),  # a piece of a word is not an answer inside another
    ("The Nile is the longest river in Africa.", "The longest river in Africa is the Nile.", True, "embedding"),
    ("Lyon.", "It is Paris, in France.", False, "embedding"),
    ("He was born in 1961.", "He died in 2004.", False, "embedding"),
])
def test_agreement_judge(judge, fresh, cached, same, how):
    found = asyncio.run(judge.judge(fresh, cached))
    assert found.same is same and found.how.startswith(how)


def test_llm_judge_reads_yes_or_no_and_asks_only_what_the_texts_cannot_settle():
    asked = []

    async def ask(prompt: str) -> str:
        asked.append(prompt)
        return "Yes." if "forty-two" in prompt else "No"
    assert asyncio.run(LlmJudge(ask).judge("forty-two", "The answer is 42.")).same
    assert not asyncio.run(LlmJudge(ask).judge("Lyon", "Paris")).same
    assert len(asked) == 2
    # equal texts, or one inside the other, are settled without a call (a small model said "no" to them)
    assert asyncio.run(LlmJudge(ask).judge("Paris.", "paris")).how == "text"
    assert asyncio.run(LlmJudge(ask).judge("Paris", "It is Paris, in France.")).how == "inside"
    assert len(asked) == 2


@pytest.mark.parametrize("above, raised", [(learning.TIGHTEN_AFTER - 1, False), (learning.TIGHTEN_AFTER + 5, True)])
def test_evidence_against_a_prior_tightens_it_sooner_than_a_loosening(above: int, raised: bool):
    """Tightening is the safe direction: a clear excess over the target from fewer observations
    than `min_observations` raises the prior; fewer than TIGHTEN_AFTER do not."""
    evidence = Evidence()
    for i in range(above):
        s = 0.95 + 0.04 * i / above
        evidence.ask(s)
        evidence.observe(s, i % 3 != 0)  # a third of the answers disagree
    decision = decide(evidence, 0.95, Rule(target=0.02, min_observations=50))
    assert (decision.threshold > 0.95) is raised


def test_vouched_hits_are_kept_out_of_the_fit_and_estimated_from_their_own_checks():
    evidence = Evidence()
    for _ in range(200):
        evidence.observe(0.90, False)  # near misses under the threshold: mostly false
        evidence.observe(0.90, True)
    before = list(evidence.seen), list(evidence.false)
    for i in range(40):
        evidence.observe(0.90, i != 0, vouched=True)  # the entries' own checks: one false in 40
        evidence.serve(0.90, vouched=True)
    assert (list(evidence.seen), list(evidence.false)) == before
    assert (evidence.vouched_served, evidence.vouched_seen, evidence.vouched_false) == (40, 40, 1)
    found = estimate(evidence)
    assert found.hits == 40 and found.rate == pytest.approx(1 / 40)
    assert Evidence.from_fields(evidence.to_fields()) == evidence


@pytest.mark.parametrize("checked, false, holds", [(9, 9, True), (40, 1, True), (40, 10, False)])
def test_entries_stop_vouching_once_their_checks_show_them_over_the_target(checked: int, false: int, holds: bool):
    evidence = Evidence()
    for i in range(checked):
        evidence.observe(0.9, i >= false, vouched=True)
    assert learning.vouching_holds(evidence, Rule(target=0.02)) is holds


def noisy_traffic(evidence: Evidence, noise: float, n: int, seed: int = 0) -> None:
    """Right pairs only, behind a judge that calls a share `noise` of any two answers different (a
    sampling backend's wording), and `n // 4` exact hits checked the same way."""
    rng = random.Random(seed)
    traffic(evidence, lambda s: noise, n, seed)
    for _ in range(n // 4):
        evidence.observe(1.0, rng.random() >= noise, repeat=True)


def test_the_judges_noise_on_repeats_is_subtracted_before_the_rule():
    """Behind a judge that calls 30% of any two answers different, right pairs look 30% false:
    without the repeats the prior is raised to the ceiling; with them the prior holds, the estimate
    is near 0, and the noise's own uncertainty keeps a 2% bound out of reach (it costs certainty)."""
    deaf, heard = Evidence(), Evidence()
    traffic(deaf, lambda s: 0.3, 2000, seed=1)
    noisy_traffic(heard, 0.3, 2000, seed=1)
    for evidence in (deaf, heard):
        for _ in range(300):
            evidence.serve(0.97)
    assert decide(deaf, 0.95, Rule(target=0.02)).threshold == Rule().ceiling
    assert estimate(deaf).low > 0.2
    assert learning.judge_noise(heard).rate == pytest.approx(0.3, abs=0.05)
    assert decide(heard, 0.95, Rule(target=0.02)).threshold == 0.95
    assert estimate(heard).rate < 0.03 and estimate(heard).low == 0.0
    loosened = decide(heard, 0.95, Rule(target=0.08))
    assert loosened.threshold < 0.95 and loosened.certified


def test_repeats_that_agree_subtract_nothing_and_stay_out_of_the_bins():
    evidence = Evidence()
    traffic(evidence, lambda s: 0.3 if s < 0.92 else 0.0, 4000)
    before = decide(evidence, 0.97, Rule(target=0.02)), estimate(evidence)
    for _ in range(learning.MIN_REPEATS * 5):
        evidence.observe(1.0, True, repeat=True)
    assert (evidence.repeat_seen, evidence.repeat_false) == (learning.MIN_REPEATS * 5, 0)
    assert learning.judge_noise(evidence).rate == 0.0
    assert (decide(evidence, 0.97, Rule(target=0.02)), estimate(evidence)) == before
    assert Evidence.from_fields(evidence.to_fields()) == evidence


def test_a_few_repeats_are_not_enough_to_subtract_anything():
    evidence = Evidence()
    for _ in range(learning.MIN_REPEATS - 1):
        evidence.observe(1.0, False, repeat=True)
    assert learning.judge_noise(evidence) == learning.Noise()


def test_a_judge_that_calls_every_repeat_different_loosens_nothing():
    evidence = Evidence()
    traffic(evidence, lambda s: 0.95, 2000)
    for _ in range(100):
        evidence.observe(1.0, False, repeat=True)
        evidence.serve(0.97)
    assert learning.judge_noise(evidence).rate == learning.MOST_NOISE
    assert decide(evidence, 0.95, Rule(target=0.02)).threshold >= 0.95
    assert estimate(evidence).high > 0.5  # it knows it knows nothing
