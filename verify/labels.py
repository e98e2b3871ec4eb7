"""When is one query's cached answer right for another? The grading rule of labeled workloads.

Three kinds of labels, as `../shared/workloads/README.md` describes them:
- rows with `answer` (ComQA): right when the groups match, the answer sets agree (share an
  answer, or one is a prefix of the other, as "1970" and "1970-10-04"), or the texts are the same;
- rows with groups only, labels complete: right when the groups match;
- labeled pairs only (QQP): right or wrong where the two texts form a labeled pair (or are the
  same text), ungraded (None) otherwise, since unlabeled is not different.
Calibration and the bench grade with the same rule, so a threshold means what the bench says.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterable

import numpy as np


def normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def answer_set(answer: str) -> frozenset[str]:
    return frozenset(part.strip().lower() for part in answer.split("|") if part.strip())


def answers_agree(a: str, b: str) -> bool:
    first, second = answer_set(a), answer_set(b)
    if first & second:
        return True
    return any(x.startswith(y) or y.startswith(x) for x in first for y in second)


class Grader:
    """`right(query, source)` for two workload rows: True, False, or None where the labels are silent."""

    def __init__(self, pairs: Iterable[dict] = (), partial: bool = False):
        self.partial = partial
        self._pairs: dict[frozenset[str], bool] = {}
        self._partners: dict[str, set[str]] = {}
        for pair in pairs:
            a, b = normalise(pair["a"]), normalise(pair["b"])
            self._pairs[frozenset((a, b))] = bool(pair["equivalent"])
            if pair["equivalent"]:
                self._partners.setdefault(a, set()).add(b)
                self._partners.setdefault(b, set()).add(a)

    def partners(self, text: str) -> set[str]:
        """The normalised texts a labeled pair calls equivalent to `text` (normalised)."""
        return self._partners.get(text, set())

    @classmethod
    def for_rows(cls, rows: list[dict], pairs: Iterable[dict] = ()) -> "Grader":
        """Rows with answers or without pairs are completely labeled; otherwise only the pairs grade."""
        pairs = list(pairs)
        partial = bool(pairs) and not any("answer" in row for row in rows)
        return cls(pairs if partial else (), partial)

    def right(self, query: dict, source: dict) -> bool | None:
        if normalise(query["text"]) == normalise(source["text"]):
            return True
        if self.partial:
            if query.get("group") is not None and query.get("group") == source.get("group"):
                return True
            return self._pairs.get(frozenset((normalise(query["text"]), normalise(source["text"]))))
        if query["group"] == source["group"]:
            return True
        return "answer" in query and "answer" in source and answers_agree(query["answer"], source["answer"])


def neighbour_pairs(stream: list[dict], encode: Callable[[list[str]], np.ndarray], grader: Grader,
                    above: float = 0.8) -> list[dict]:
    """What a cache meets, as labeled pairs: each query against its most similar earlier query
    (when at least `above`), labeled by `grader` (pairs it cannot grade are left out). Labeled
    pairs alone miss the near neighbours nobody wrote down."""
    texts = [q["text"] for q in stream]
    vectors = encode(texts)
    found = []
    for i in range(1, len(texts)):
        similarities = vectors[:i] @ vectors[i]
        j = int(np.argmax(similarities))
        right = grader.right(stream[i], stream[j]) if similarities[j] >= above else None
        if right is not None:
            found.append({"a": texts[j], "b": texts[i], "equivalent": right, "category": stream[i].get("category", "")})
    return found
