"""A second opinion on a semantic neighbour before its answer is served.

Cosine similarity says two queries are about the same thing, not that one answer fits both:
"How do I learn Python?" and "How do I learn Java?" sit at 0.8, "jobs after 10 years" and "jobs
in 10 years" at 0.98. A verifier looks at what the two texts differ in and says how sure it is
that the cached answer is right; the category's `verify.threshold` turns that into yes or no,
and a refusal carries a short reason for the near-miss headers and reports.

Verifiers are synchronous and cheap (well under a millisecond): the proxy calls them from a
thread after the vector search, and only for a neighbour that already passed the threshold.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Protocol

import numpy as np

from catcache.verify.pairdiff import FEATURES, PairDiff, diff, features

MODELS = Path(__file__).parent / "models"
PAIR_CLASSIFIER = MODELS / "pair_classifier.json"


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    score: float
    reason: str  # why it was refused ("numbers differ: 3 vs 5"); "" when accepted


class Verifier(Protocol):
    name: str

    def score(self, query: str, candidate: str, similarity: float) -> float:
        """Confidence in [0, 1] that an answer to `candidate` correctly answers `query`."""
        ...

    def check(self, query: str, candidate: str, similarity: float, threshold: float) -> Verdict:
        """Accept or refuse `candidate`'s answer for `query`, with the reason for a refusal."""
        ...


def difference(d: PairDiff) -> str:
    """The most telling difference between two queries, in a few words; "" when none stands out."""
    if d.numbers_differ:
        return (f"numbers differ: {_listed(d.numbers_query | d.counts_query)} vs "
                f"{_listed(d.numbers_candidate | d.counts_candidate)}")
    if d.names_differ:
        return f"names differ: {_listed(d.names_differ)}"
    if d.negation_differs:
        return "negation differs"
    if d.kinds_differ:
        return f"asks for a {d.kind_query} vs a {d.kind_candidate}"
    if d.axis:
        return f"opposite {d.axis}"
    if d.swapped:
        return f"roles swapped: {'/'.join(d.swapped)}"
    if d.ask_query != d.ask_candidate:
        return f"asks differ: {d.ask_query or '-'} vs {d.ask_candidate or '-'}"
    if d.only_query or d.only_candidate:
        return f"words differ: {_listed(d.only_query)} vs {_listed(d.only_candidate)}"
    return ""


def _listed(words: frozenset[str], most: int = 3) -> str:
    shown = sorted(words)[:most]
    return ",".join(shown) + ("..." if len(words) > most else "") if shown else "-"


class Checks:
    """`check` for any verifier: its score against the category's threshold, and why not."""

    name: str

    def score(self, query: str, candidate: str, similarity: float) -> float:
        raise NotImplementedError

    def check(self, query: str, candidate: str, similarity: float, threshold: float) -> Verdict:
        score = self.score(query, candidate, similarity)
        if score >= threshold:
            return Verdict(True, score, "")
        why = difference(diff(query, candidate))
        detail = f"{self.name} {score:.2f} < {threshold:.2f}"
        return Verdict(False, score, f"{why}; {detail}" if why else detail)


class NoVerifier(Checks):
    """Trust the threshold alone."""

    name = "none"

    def score(self, query: str, candidate: str, similarity: float) -> float:
        return 1.0


class LexicalGuard(Checks):
    """Refuse when the queries differ in a number or ordinal, a name, a negation, the kind of
    answer they ask for (when / where / who / how many), the end of an axis (east / west, born /
    died) or who does what to whom (two words trade places); no training needed.

    These are the differences an embedding averages away and an answer never survives.
    """

    name = "lexical-guard"

    def score(self, query: str, candidate: str, similarity: float) -> float:
        d = diff(query, candidate)
        refused = d.numbers_differ or d.names_differ or d.negation_differs or d.kinds_differ or d.axis or d.swapped
        return 0.0 if refused else 1.0


class PairClassifier(Checks):
    """Gradient-boosted trees over the similarity and the pair's differences (verify/pairdiff.py),
    trained on labeled pairs by bench/train_verifier.py and stored as plain JSON."""

    name = "pair-classifier"

    def __init__(self, path: Path = PAIR_CLASSIFIER):
        model = json.loads(path.read_text())
        if tuple(model["features"]) != FEATURES:
            raise ValueError(f"{path} was trained on features {model['features']}, this code computes {FEATURES}")
        self._base = float(model["base"])
        self._rate = float(model["learning_rate"])
        self._trees = [
            (t["feature"], t["threshold"], t["left"], t["right"], t["value"]) for t in model["trees"]
        ]

    def score(self, query: str, candidate: str, similarity: float) -> float:
        return self.predict(features(query, candidate, similarity))

    def predict(self, x: np.ndarray) -> float:
        raw = self._base
        for feature, threshold, left, right, value in self._trees:
            node = 0
            while left[node] != -1:
                node = left[node] if x[feature[node]] <= threshold[node] else right[node]
            raw += self._rate * value[node]
        return 1.0 / (1.0 + math.exp(-raw))


@cache
def load_verifier(name: str) -> Verifier:
    """The verifier a category's `verify.verifier` names; loaded once per process."""
    if name == "none":
        return NoVerifier()
    if name == "lexical-guard":
        return LexicalGuard()
    if name == "pair-classifier":
        return PairClassifier()
    raise ValueError(f"unknown verifier '{name}' (pair-classifier, lexical-guard or none)")
