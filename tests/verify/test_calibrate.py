"""`catcache calibrate`: threshold choice, the table, and a policy copy that keeps its comments."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from catcache.policy.loader import load_policy, parse_policy
from catcache import cli
from catcache.verify.calibrate import (Scored, calibrate, false_rate_bound, label_noise, lowest_threshold, rates,
                                      write_thresholds)

ROOT = Path(__file__).resolve().parents[2]
PAIRS = Path(__file__).parents[1] / "data/verify_pairs.jsonl"


def scored(*rows: tuple[int, float, bool], category: str = "factual") -> list[Scored]:
    """`count` pairs at `similarity`, labeled `equivalent`, for each (count, similarity, equivalent)."""
    return [Scored(category, similarity, True, equivalent) for count, similarity, equivalent in rows
            for _ in range(count)]


def test_lowest_threshold_meets_the_precision():
    rows = scored((200, 0.98, True), (3, 0.96, False), (200, 0.95, True), (50, 0.90, False))
    assert lowest_threshold(rows, 0.95) == 0.95     # 3 wrong in 403: certified within 5%
    assert lowest_threshold(rows, 0.99) == 0.98     # 3 in 403 is 0.7% seen, but up to 1.5%: not within 1%
    assert lowest_threshold(rows, 0.80) == 0.9      # 53 in 453
    assert lowest_threshold(scored((500, 0.99, False)), 0.9) is None


def test_a_few_lucky_pairs_certify_nothing():
    assert false_rate_bound(0, 10) > 0.1 > false_rate_bound(0, 20) > 0.05 > false_rate_bound(0, 200)
    assert lowest_threshold(scored((10, 0.97, True)), 0.98) is None
    assert lowest_threshold(scored((150, 0.97, True)), 0.98) == 0.97


def test_a_short_threshold_never_drops_the_pair_it_was_chosen_at():
    rows = scored((300, 0.95, True), (1, 0.92, False), (300, 0.9004, True), (300, 0.9003, True))
    chosen = lowest_threshold(rows, 0.98)
    assert chosen == 0.9 and rates(rows, chosen) == (1.0, 1 / 901)
    tight = scored((300, 0.95, True), (300, 0.9007, True), (100, 0.9004, False))
    assert lowest_threshold(tight, 0.98) == 0.9007  # 0.90 or 0.900 would admit the wrong pairs at 0.9004


def test_refused_pairs_never_count():
    rows = scored((200, 0.99, True), (200, 0.98, True)) + [Scored("factual", 0.985, False, False)] * 50
    assert lowest_threshold(rows, 0.98) == 0.98


def test_label_errors_are_estimated_on_near_identical_pairs():
    noisy = scored((190, 0.995, True), (10, 0.995, False), (200, 0.95, True))
    assert 0.02 < label_noise(noisy) < 0.05                                   # 5% seen, lower bound
    assert label_noise(scored((20, 0.995, True), (5, 0.995, False))) == 0.0   # too few to say
    assert label_noise(scored((300, 0.995, True), (300, 0.95, False))) == 0.0  # clean labels


def test_expected_label_errors_are_forgiven_before_certifying():
    rows = scored((400, 0.98, True), (400, 0.93, True), (24, 0.93, False))    # 3% "different" at 0.93
    assert lowest_threshold(rows, 0.98) == 0.98
    forgiving = [replace(s, label_noise=0.03) for s in rows]
    assert lowest_threshold(forgiving, 0.98) == 0.93


def test_few_pairs_fall_back_to_the_pooled_threshold():
    policy = parse_policy("categories:\n  big: {threshold: 0.9}\n  small: {threshold: 0.9}\n"
                          "  default: {threshold: 0.9}\n", "p.yaml")
    rows = scored((400, 0.97, True), (40, 0.93, False), category="big") + scored((12, 0.99, True), category="small")
    chosen = {c.category: c for c in calibrate(policy, rows, 0.98)}
    assert chosen["big"].threshold == chosen["small"].threshold == 0.97
    assert chosen["big"].note == "" and chosen["small"].note.startswith("pooled")


def test_nothing_goes_above_the_ceiling():
    policy = parse_policy("categories:\n  noisy: {threshold: 0.9}\n  default: {threshold: 0.9}\n", "p.yaml")
    rows = scored((300, 0.999, True), (300, 0.999, False), category="noisy")
    noisy = calibrate(policy, rows, 0.98)[0]
    assert noisy.threshold == 0.995 and noisy.note.startswith("ceiling")


def test_write_thresholds_keeps_comments_and_layout():
    text = (ROOT / "policies.yaml").read_text()
    written = write_thresholds(text, {"code": 0.971, "factual": 0.95})
    before, after = text.splitlines(), written.splitlines()
    changed = [(b, a) for b, a in zip(before, after) if b != a]
    assert len(before) == len(after)
    assert [a.strip() for _, a in changed] == ["threshold: 0.971", "threshold: 0.95"]
    assert parse_policy(written, "calibrated.yaml").categories["code"].threshold == 0.971


def test_write_thresholds_adds_a_missing_line_and_skips_nested_ones():
    text = ("version: 1\n# why\ncategories:\n  a:   # first\n    verify:\n      threshold: 0.7\n    ttl: 1d\n"
            "  default:\n    ttl: 2d\n")
    written = write_thresholds(text, {"a": 0.9, "default": 0.95})
    assert written == ("version: 1\n# why\ncategories:\n  a:   # first\n    threshold: 0.9\n    verify:\n"
                       "      threshold: 0.7\n    ttl: 1d\n  default:\n    threshold: 0.95\n    ttl: 2d\n")


@pytest.mark.parametrize("uniform", [False, True])
def test_calibrate_end_to_end(tmp_path, capsys, uniform):
    out = tmp_path / "calibrated.yaml"
    argv = ["calibrate", "--pairs", str(PAIRS), "--target-precision", "0.9", "--policies",
            str(ROOT / "policies.yaml"), "--out", str(out)] + (["--uniform"] if uniform else [])
    assert cli.main(argv) == 0
    policy = load_policy(out)
    shown = capsys.readouterr().out
    assert "overall" in shown and "false-hit rate" in shown
    assert (ROOT / "policies.yaml").read_text().count("#") == out.read_text().count("#")
    thresholds = {n: c.threshold for n, c in policy.categories.items() if c.cacheable}
    if uniform:
        assert len({t for n, t in thresholds.items() if not policy.categories[n].ic}) == 1
