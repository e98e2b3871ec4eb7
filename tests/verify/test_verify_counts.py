"""Counts written as words: two different counts are two questions, a count on one side is not.
Examples from ComQA's calibration half (bench/heldout.py, half 0) only."""

from __future__ import annotations

import pytest

from catcache.verify.verifiers import load_verifier


def test_two_counts_in_words_differ():
    verdict = load_verifier("lexical-guard").check("what are their three largest cities in england?",
                                                   "what are the five largest cities in england?", 0.97, 0.5)
    assert not verdict.accepted and verdict.reason.startswith("numbers differ: 3 vs 5")


@pytest.mark.parametrize("query, candidate", [
    ("what are two religions in finland?", "what are the religions of finland?"),   # labeled the same cluster
    ("what is the three 3 biggest cities in england?", "what are the 3 biggest cities in england?"),
])
def test_a_count_on_one_side_or_in_both_forms_passes(query, candidate):
    assert load_verifier("lexical-guard").check(query, candidate, 0.93, 0.5).accepted


@pytest.mark.parametrize("query, candidate, differ", [
    ("what is the first prime number above one hundred?", "what is the first prime number above three hundred?", True),
    ("how far is two thousand miles in kilometres?", "how far is 2000 miles in kilometres?", False),
    ("is a city of 3 million people large?", "is a city of three million people large?", False),
    ("what costs a hundred dollars?", "what costs a thousand dollars?", True),
])
def test_numbers_written_with_a_scale_word_are_numbers(query, candidate, differ):
    """Invented examples: "one hundred" is 100, so it differs from 300 and agrees with "100"."""
    verdict = load_verifier("lexical-guard").check(query, candidate, 0.95, 0.5)
    assert verdict.accepted is not differ
    assert verdict.reason.startswith("numbers differ") is differ
