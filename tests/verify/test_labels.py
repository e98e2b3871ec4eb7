"""The grading rule shared by calibration and the bench: complete labels, answers, labeled pairs only."""

from __future__ import annotations

import numpy as np

from catcache.verify.labels import Grader, answers_agree, neighbour_pairs


def row(text: str, group: str, answer: str | None = None) -> dict:
    return {"text": text, "group": group, **({"answer": answer} if answer is not None else {})}


def test_answers_agree_on_a_shared_answer_or_a_prefix():
    assert answers_agree("1970-10-04", "1970")
    assert answers_agree("https://en.wikipedia.org/wiki/paris | lyon", "Lyon ")
    assert not answers_agree("1990-02-08", "https://en.wikipedia.org/wiki/lihue")


def test_complete_labels_grade_by_group_or_answer():
    grader = Grader.for_rows([row("a", "g1", "x"), row("b", "g2", "x"), row("c", "g3", "y")])
    assert grader.right(row("a", "g1", "x"), row("a'", "g1", "z"))
    assert grader.right(row("b", "g2", "x"), row("a", "g1", "x")), "another cluster with the same answer"
    assert grader.right(row("c", "g3", "y"), row("a", "g1", "x")) is False


def test_partial_labels_grade_only_labeled_pairs():
    pairs = [{"a": "How can I access Facebook in China?", "b": "How do I use Facebook in China?", "equivalent": True},
             {"a": "Is 2016 a leap year?", "b": "Is 2017 a leap year?", "equivalent": False}]
    rows = [row("How can I access Facebook in China?", "p1"), row("Is 2016 a leap year?", "p2"),
            row("How do I use Facebook in China?", "p1"), row("Is 2017 a leap year?", "p3"), row("Facebook in China?", "p4")]
    grader = Grader.for_rows(rows, pairs)
    assert grader.partial
    assert grader.right(rows[2], rows[0]) is True
    assert grader.right(rows[3], rows[1]) is False
    assert grader.right(rows[4], rows[0]) is None, "unlabeled is not different"
    assert grader.partners("how can i access facebook in china?") == {"how do i use facebook in china?"}
    assert grader.partners("is 2016 a leap year?") == set(), "a pair labeled different makes no partners"


def test_neighbour_pairs_label_what_a_cache_meets():
    rows = [row("a", "g1", "x"), row("b", "g2", "y"), row("a again", "g1", "x")]
    vectors = {"a": [1.0, 0.0], "b": [0.0, 1.0], "a again": [0.96, 0.28]}

    def encode(texts: list[str]) -> np.ndarray:
        return np.array([vectors[t] for t in texts], dtype=np.float32)

    pairs = neighbour_pairs(rows, encode, Grader.for_rows(rows), above=0.8)
    assert pairs == [{"a": "a", "b": "a again", "equivalent": True, "category": ""}]
