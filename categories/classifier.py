"""Assign a request to a category: the policy's match rules first, then the nearest exemplar.

Rules are cheap and exact (an ops person can pin a model, route or header to a category); the
centroid catches everything the rules do not name. A query that is close to no centroid goes to
the default category rather than to a poor guess, since a wrong category means a wrong threshold.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from catcache.policy.schema import Policy


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
    reason: str  # "header", "model", "path", "code", "regex", "exemplar" or "default"


class Classifier:
    def __init__(self, policy: Policy, exemplar_vectors: np.ndarray, exemplar_categories: list[str]):
        self._policy = policy
        self._regexes = {name: [re.compile(p) for p in c.match.regex] for name, c in policy.categories.items()}
        self._exemplars = exemplar_vectors
        self._exemplar_categories = exemplar_categories

    @classmethod
    def build(cls, policy: Policy, encode: Callable[[list[str]], np.ndarray]) -> "Classifier":
        """`encode(texts)` returns unit vectors; the exemplars are embedded once, here."""
        texts, owners = [], []
        for name, category in policy.categories.items():
            texts += category.exemplars
            owners += [name] * len(category.exemplars)
        return cls(policy, encode(texts), owners)

    def by_rules(self, traits: RequestTraits) -> Classification | None:
        categories = self._policy.categories
        if traits.header:
            for name, category in categories.items():
                if traits.header == name or traits.header in category.match.header:
                    return Classification(name, 1.0, "header")
        for name, category in categories.items():
            rules = category.match
            if traits.model in rules.models:
                return Classification(name, 1.0, "model")
            if any(traits.path.startswith(p) for p in rules.paths):
                return Classification(name, 1.0, "path")
            if rules.has_code and traits.has_code:
                return Classification(name, 1.0, "code")
            if any(regex.search(traits.text) for regex in self._regexes[name]):
                return Classification(name, 1.0, "regex")
        return None

    def by_exemplar(self, vector: np.ndarray) -> Classification:
        default = self._policy.classifier.default
        if not self._exemplar_categories:
            return Classification(default, 0.0, "default")
        similarities = self._exemplars @ vector
        best = int(np.argmax(similarities))
        confidence = float(similarities[best])
        if confidence < self._policy.classifier.min_confidence:
            return Classification(default, confidence, "default")
        return Classification(self._exemplar_categories[best], confidence, "exemplar")

    def classify(self, traits: RequestTraits, vector: np.ndarray | None) -> Classification:
        ruled = self.by_rules(traits)
        if ruled is not None or vector is None:
            return ruled or Classification(self._policy.classifier.default, 0.0, "default")
        return self.by_exemplar(vector)
