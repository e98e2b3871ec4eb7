"""Learn a category's threshold from its own traffic, under a false-hit target, with a guarantee.

An *observation* is one judged pair: the similarity `s` of a query to a cached neighbour that the
verifier accepted, and whether the two answers turned out the same (the judge, verify/judge.py).
They come from near misses (a band under the live threshold: they go to the backend anyway),
from exploration (a small share of would-be hits answered by the backend instead) and from
feedback. Counts are kept per similarity bin (`Evidence`), in Redis, shared by every proxy.

The model: P(false | s) is fitted non-increasing in `s` (pooled adjacent violators) from all
observations, which is unbiased however unevenly they were sampled, since each is judged at its own
similarity. The false-hit rate of a threshold `t` is that fit averaged over the similarities it
would serve: the best verified neighbour of every lookup at or above `t` (`demand`), plus the exact
hits. The rule (docs/verification.md, "Learning thresholds"): serve from the lowest `t` whose
one-sided upper bound on that rate is within the target, once at least `min_observations` lie at
or above it. The same fit over the similarities actually served is the running estimate.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from collections.abc import Mapping
from dataclasses import dataclass, field

LOW = 0.80        # the lowest similarity anything is learned about
WIDTH = 0.0025    # bin width: 80 bins between LOW and 1
BINS = round((1.0 - LOW) / WIDTH)
SCALARS = ("exact", "explored", "judged", "refused", "refused_same", "vouched_served", "vouched_seen", "vouched_false",
           "repeat_seen", "repeat_false")


def bin_of(similarity: float) -> int:
    """The bin of a similarity at or above LOW (values above 1 from rounding go to the last)."""
    return min(BINS - 1, max(0, int((similarity - LOW) / WIDTH + 1e-9)))


def edge(b: int) -> float:
    """The lowest similarity of bin `b`: the threshold that serves bins b and up."""
    return round(LOW + b * WIDTH, 6)


def decreasing_fit(rates: list[float], weights: list[float]) -> list[float]:
    """Pooled adjacent violators: the non-increasing sequence closest to `rates` in weighted
    squares. Bins without weight take the value of the nearest weighted bin below them (a rate
    that only falls with similarity is at most that), or of the first weighted bin above."""
    blocks: list[list[float]] = []  # [value, weight, count]
    for rate, weight in zip(rates, weights):
        if weight <= 0:
            blocks.append([math.nan, 0.0, 1])
            continue
        blocks.append([rate, weight, 1])
        while True:
            weighted = [i for i, b in enumerate(blocks) if b[1] > 0]
            if len(weighted) < 2 or blocks[weighted[-2]][0] >= blocks[weighted[-1]][0]:
                break
            a, b = weighted[-2], weighted[-1]
            total = blocks[a][1] + blocks[b][1]
            value = (blocks[a][0] * blocks[a][1] + blocks[b][0] * blocks[b][1]) / total
            count = sum(block[2] for block in blocks[a:b + 1])
            blocks[a:] = [[value, total, count]]
    fitted: list[float] = []
    for value, _, count in blocks:
        fitted += [value] * count
    first = next((v for v in fitted if not math.isnan(v)), math.nan)
    last = first
    for i, value in enumerate(fitted):
        if math.isnan(value):
            fitted[i] = last
        else:
            last = value
    return fitted


@dataclass
class Evidence:
    """What one category (or one cell of it) has seen, per similarity bin.

    `seen` and `false` count judged observations of verifier-accepted neighbours; `served` counts
    semantic hits served, `exact` exact hits (never false). `explored` counts would-be hits sent to
    the backend, `judged` judge calls."""

    seen: list[int] = field(default_factory=lambda: [0] * BINS)
    false: list[int] = field(default_factory=lambda: [0] * BINS)
    served: list[int] = field(default_factory=lambda: [0] * BINS)
    demand: list[int] = field(default_factory=lambda: [0] * BINS)
    exact: int = 0
    explored: int = 0
    judged: int = 0
    refused: int = 0  # observations of neighbours the verifier refused (its own error, not the threshold's)
    refused_same: int = 0
    # Hits an entry vouched for under the threshold (proxy/lookup.py), and their checks: a population
    # chosen by its own evidence, kept out of the bins so it cannot bias the fit of everything else.
    vouched_served: int = 0
    vouched_seen: int = 0
    vouched_false: int = 0
    # Exact hits checked: the backend asked the very same request again. Any disagreement there is
    # the judge's (or a sampling backend's) noise, never a false hit: see `judge_noise`.
    repeat_seen: int = 0
    repeat_false: int = 0

    def observe(self, similarity: float, same: bool, vouched: bool = False, repeat: bool = False) -> None:
        if repeat:
            self.repeat_seen += 1
            self.repeat_false += not same
            return
        if vouched:
            self.vouched_seen += 1
            self.vouched_false += not same
            return
        if similarity < LOW:
            return
        b = bin_of(similarity)
        self.seen[b] += 1
        self.false[b] += not same

    def ask(self, similarity: float) -> None:
        """A lookup whose best verified neighbour lay at `similarity`: a hit at any threshold below it."""
        if similarity >= LOW:
            self.demand[bin_of(similarity)] += 1

    def serve(self, similarity: float | None, vouched: bool = False) -> None:
        if vouched:
            self.vouched_served += 1
        elif similarity is None:
            self.exact += 1
        elif similarity >= LOW:
            self.served[bin_of(similarity)] += 1

    @property
    def observations(self) -> int:
        return sum(self.seen)

    def above(self, b: int) -> tuple[int, int]:
        """(false, seen) among observations in bins b and up."""
        return sum(self.false[b:]), sum(self.seen[b:])

    def to_fields(self) -> dict[str, int]:
        """The Redis hash fields, only the non-zero ones."""
        fields = {f"{name}:{b}": value for name in ("seen", "false", "served", "demand")
                  for b, value in enumerate(getattr(self, name)) if value}
        fields |= {name: getattr(self, name) for name in SCALARS
                   if getattr(self, name)}
        return fields

    @classmethod
    def from_fields(cls, fields: Mapping[str | bytes, str | bytes | int]) -> "Evidence":
        evidence = cls()
        for key, value in fields.items():
            key = key.decode() if isinstance(key, bytes) else key
            name, _, b = key.partition(":")
            if b and name in ("seen", "false", "served", "demand") and b.isdigit() and int(b) < BINS:
                getattr(evidence, name)[int(b)] = int(value)
            elif not b and name in SCALARS:
                setattr(evidence, name, int(value))
        return evidence


@dataclass(frozen=True)
class Rule:
    """The learner's settings, from the policy's `learning` section."""

    target: float = 0.02
    confidence: float = 0.95
    min_observations: int = 50
    ceiling: float = 0.995


@dataclass(frozen=True)
class Decision:
    """The live threshold and why: `certified` when the bound allowed it, else the prior held."""

    threshold: float
    certified: bool
    observations: int      # at s >= threshold
    false: int
    bound: float           # the upper bound on the false share there (1.0 with no data)


# Observations at or above the prior before evidence against it can tighten it: fewer than the
# `min_observations` a loosening needs, since tightening is the safe direction, and the lower end
# of the interval, not the estimate, must be over the target.
TIGHTEN_AFTER = 20


def decide(evidence: Evidence, prior: float, rule: Rule) -> Decision:
    """The lowest threshold whose bound on the false-hit rate of the hits it would serve is within
    the target, with at least `min_observations` observations at or above it.

    Below the prior that is the learned threshold. Above it, the prior holds unless the evidence
    shows it wrong (the lower end of its interval over the target, from at least `TIGHTEN_AFTER`
    observations at or above it): then the lowest certified threshold, or the ceiling when none
    is. No evidence, no change."""
    start = bin_of(prior) if prior >= LOW else 0
    z = NormalDist().inv_cdf(rule.confidence)
    found = None
    for b in range(BINS):
        false, seen = evidence.above(b)
        if edge(b) > rule.ceiling or seen < rule.min_observations:
            break  # fewer observations still above
        bound = would_serve(evidence, b, z)
        if bound.high <= rule.target:
            found = Decision(edge(b), True, seen, false, bound.high)
            break
    if found is not None and found.threshold <= prior:
        return found
    false, seen = evidence.above(start)
    at_prior = would_serve(evidence, start, z)
    if seen >= TIGHTEN_AFTER and at_prior.low > rule.target:
        if found is not None:
            return found
        false, seen = evidence.above(bin_of(rule.ceiling))
        return Decision(rule.ceiling, False, seen, false, at_prior.high)
    return Decision(prior, False, seen, false, at_prior.high)


@dataclass(frozen=True)
class Estimate:
    """A false-hit rate with an interval (one-sided bounds at the confidence asked for)."""

    rate: float
    low: float
    high: float
    hits: int


def blocks(evidence: Evidence) -> list[tuple[int, int, int, int]]:
    """The monotone fit of P(false | s) as runs of bins: (first bin, last bin, false, observations)."""
    raw = [f / n if n else 0.0 for f, n in zip(evidence.false, evidence.seen)]
    fitted = decreasing_fit(raw, [float(n) for n in evidence.seen])
    runs, b = [], 0
    while b < BINS:
        end = b
        while end + 1 < BINS and fitted[end + 1] == fitted[b]:
            end += 1
        false, seen = sum(evidence.false[b:end + 1]), sum(evidence.seen[b:end + 1])
        runs.append((b, end, false, seen))
        b = end + 1
    return runs


# Exact hits checked before the judge's noise on them is taken into account, and the most noise
# ever subtracted (a judge that calls nearly every pair different tells nothing; the bounds say so).
MIN_REPEATS = 10
MOST_NOISE = 0.9


@dataclass(frozen=True)
class Noise:
    """How often the judge calls two answers to the very same request different, and the variance
    of that rate (both 0 until MIN_REPEATS checks, or while none was called different)."""

    rate: float = 0.0
    variance: float = 0.0


def judge_noise(evidence: Evidence) -> Noise:
    """The judge's noise, from the exact hits checked. Behind a sampling backend (temperature above
    0) two answers to one question differ in wording, and a judge that reads that as disagreement
    sees false hits everywhere. An observed false rate `r` is then read as `(r - e) / (1 - e)`, and
    the uncertainty of `e` is added to every interval, so a few repeats loosen nothing; repeats that
    all agree subtract nothing and add no uncertainty."""
    n = evidence.repeat_seen
    if n < MIN_REPEATS or evidence.repeat_false == 0:
        return Noise()
    jeffreys = (evidence.repeat_false + 0.5) / (n + 1.0)
    return Noise(min(MOST_NOISE, evidence.repeat_false / n), jeffreys * (1 - jeffreys) / (n + 1))


def less_noise(rate: float, noise: Noise) -> float:
    """An observed false rate with the judge's noise taken out."""
    return max(0.0, rate - noise.rate) / (1 - noise.rate)


def integrate(evidence: Evidence, counts: list[int], extra_hits: int, z: float, vouched: int = 0) -> Estimate:
    """The expected false share of hits at the similarities `counts` gives (plus `extra_hits` exact
    ones, never false, and `vouched` ones, at their own checks' rate) under the fit, less the
    judge's noise, and a normal-approximation interval over its runs."""
    hits = sum(counts) + extra_hits + vouched
    if hits == 0:
        return Estimate(0.0, 0.0, 0.0, 0)
    noise = judge_noise(evidence)
    expected = variance = 0.0
    runs = [(sum(counts[first:last + 1]), false, seen) for first, last, false, seen in blocks(evidence)]
    for mass, false, seen in runs + [(vouched, evidence.vouched_false, evidence.vouched_seen)]:
        expected += mass * less_noise(false / seen if seen else 0.5, noise)
        # The variance of the run's rate, with a Jeffreys half-count so that a run seen a few times
        # without a false one is not taken for certain.
        rate = (false + 0.5) / (seen + 1.0)
        variance += mass ** 2 * rate * (1 - rate) / (seen + 1)
    # The noise is one number subtracted from every run: its variance counts once, for all hits.
    variance = (variance + (hits - extra_hits) ** 2 * noise.variance) / (1 - noise.rate) ** 2
    rate, spread = expected / hits, z * math.sqrt(variance) / hits
    return Estimate(rate, max(0.0, rate - spread), min(1.0, rate + spread), hits)


def would_serve(evidence: Evidence, b: int, z: float) -> Estimate:
    """The false-hit rate of the hits a threshold at bin `b` would have served: every lookup whose
    best verified neighbour lay at or above it, and the exact hits."""
    return integrate(evidence, [0] * b + evidence.demand[b:], evidence.exact, z)


def estimate(evidence: Evidence, confidence: float = 0.95) -> Estimate:
    """The false-hit rate of the hits served so far: the fit summed over their similarities."""
    return integrate(evidence, evidence.served, evidence.exact, NormalDist().inv_cdf(confidence),
                     evidence.vouched_served)


def vouching_holds(evidence: Evidence, rule: Rule) -> bool:
    """Whether a category's entries may still vouch for hits under its threshold: not once the
    checks of those they vouched for show, at the lower end of their interval, a false rate over
    the target (after at least 10 checks)."""
    if evidence.vouched_seen < 10:
        return True
    z = NormalDist().inv_cdf(rule.confidence)
    noise = judge_noise(evidence)
    rate = (evidence.vouched_false + 0.5) / (evidence.vouched_seen + 1.0)
    spread = z * math.sqrt(rate * (1 - rate) / (evidence.vouched_seen + 1) + noise.variance) / (1 - noise.rate)
    return less_noise(rate, noise) - spread <= rule.target


def exploration_rate(checked: int, most: float, least: float, half_life: int = 100) -> float:
    """The share of would-be hits (or of exact hits) to check: `most` while there is little evidence,
    falling toward `least` as `checked` grows (halved every `half_life` checks), never above `most`."""
    return max(least, most * 0.5 ** (checked / half_life))
