"""Assign a request to a category: the policy's match rules first, then the nearest exemplar centroid.

Rules are cheap and exact (an ops person can pin a model, route or header to a category); the
centroids catch everything the rules do not name. A query that is close to no centroid goes to
the default category rather than to a poor guess, since a wrong category means a wrong threshold.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from catcache.policy.schema import MatchRules, Policy


@dataclass(frozen=True)
class RequestTraits:
    """What the rules look at, taken from the request before any embedding is computed."""

    model: str
    path: str
    header: str | None
    text: str
    has_code: bool


@dataclass(frozen=True)
class Classification:
    category: str
    confidence: float
    reason: str  # "header", "model", "path", "code", "regex", "centroid" or "default"


def centroids(vectors: np.ndarray, counts: list[int]) -> np.ndarray:
    """One unit vector per run of `counts` rows: the mean of the run's normalised rows, normalised.

    Cosine with a centroid is the mean cosine with the category's exemplars (scaled by one factor
    per category), so one odd exemplar cannot pull in queries on its own the way a nearest-exemplar
    rule lets it, and a query costs one dot product per category, not per exemplar."""
    units = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    means = np.stack([run.mean(axis=0) for run in np.split(units, np.cumsum(counts)[:-1])])
    return (means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)).astype(np.float32)


class Classifier:
    """Rules are tried in two tiers: first the categories with `cacheable: false`, then the rest,
    each tier in the policy's order and with the x-catcache-category header before the other rules.

    A never-cache rule therefore beats every cacheable category's rules, whatever their order in
    the file ("my bank balance today" is personal, not time_sensitive), and beats the header too:
    the header is the caller's choice of category, but a never-cache rule protects users' data, and
    a client library that sets one header on every request must not get personal queries cached.
    A header naming a never-cache category always wins, since it can only make caching stricter.
    A cacheable category is chosen by the header only through a value its `match.header` lists:
    the policy says which clients' choices it takes, so no client picks a category (and with it a
    TTL, a threshold, sharing across tenants) that the policy did not offer to the header.
    """

    def __init__(self, policy: Policy, centroid_vectors: np.ndarray, centroid_categories: list[str]):
        self._policy = policy
        self._regexes = {name: [re.compile(p) for p in c.match.regex] for name, c in policy.categories.items()}
        never = [name for name, c in policy.categories.items() if not c.cacheable]
        self._tiers = (never, [name for name in policy.categories if name not in never])
        self._centroids = centroid_vectors
        self._centroid_categories = centroid_categories

    @classmethod
    def build(cls, policy: Policy, encode: Callable[[list[str]], np.ndarray]) -> "Classifier":
        """`encode(texts)` returns one vector per text; the exemplars are embedded once, here."""
        named = {name: c.exemplars for name, c in policy.categories.items() if c.exemplars}
        if not named:
            return cls(policy, np.zeros((0, 0), dtype=np.float32), [])
        vectors = encode([text for texts in named.values() for text in texts])
        return cls(policy, centroids(vectors, [len(texts) for texts in named.values()]), list(named))

    def by_rules(self, traits: RequestTraits) -> Classification | None:
        categories = self._policy.categories
        for tier in self._tiers:
            if traits.header:
                for name in tier:
                    if traits.header in categories[name].match.header or (
                            traits.header == name and not categories[name].cacheable):
                        return Classification(name, 1.0, "header")
            for name in tier:
                reason = self._rule_reason(categories[name].match, self._regexes[name], traits)
                if reason is not None:
                    return Classification(name, 1.0, reason)
        return None

    @staticmethod
    def _rule_reason(rules: MatchRules, regexes: list[re.Pattern], traits: RequestTraits) -> str | None:
        """Which of one category's rules (header aside) matches `traits`, if any."""
        if traits.model in rules.models:
            return "model"
        if any(traits.path.startswith(p) for p in rules.paths):
            return "path"
        if rules.has_code and traits.has_code:
            return "code"
        if any(regex.search(traits.text) for regex in regexes):
            return "regex"
        return None

    def by_centroid(self, vector: np.ndarray) -> Classification:
        """The category of the centroid most similar to the unit `vector`, or the default category
        when even that one is less similar than `classifier.min_confidence`."""
        default = self._policy.classifier.default
        if not self._centroid_categories:
            return Classification(default, 0.0, "default")
        similarities = self._centroids @ vector
        best = int(np.argmax(similarities))
        confidence = float(similarities[best])
        if confidence < self._policy.classifier.min_confidence:
            return Classification(default, confidence, "default")
        return Classification(self._centroid_categories[best], confidence, "centroid")

    def classify(self, traits: RequestTraits, vector: np.ndarray | None) -> Classification:
        ruled = self.by_rules(traits)
        if ruled is not None or vector is None:
            return ruled or Classification(self._policy.classifier.default, 0.0, "default")
        return self.by_centroid(vector)
