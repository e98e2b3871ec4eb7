"""`catcache calibrate`: threshold choice, the table, and a policy copy that keeps its comments."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from catcache.index.calibrate import Scored, add_parser, lowest_threshold, rates, run, write_thresholds
from catcache.policy.loader import load_policy, parse_policy

ROOT = Path(__file__).resolve().parent.parent
PAIRS = Path(__file__).parent / "data/verify_pairs.jsonl"


def scored(*rows: tuple[float, bool]) -> list[Scored]:
    return [Scored("factual", similarity, True, equivalent) for similarity, equivalent in rows]


def test_lowest_threshold_meets_the_precision():
    rows = scored((0.99, True), (0.98, True), (0.97, False), (0.96, True), (0.95, True), (0.94, True),
                  (0.93, False), (0.92, False))
    assert lowest_threshold(rows, 1.0) == 0.98          # nothing wrong allowed: stop above 0.97
    assert lowest_threshold(rows, 0.8) == 0.94          # 1 wrong in 6
    assert lowest_threshold(rows, 0.5) == 0.92
    assert lowest_threshold(scored((0.99, False)), 0.9) is None


def test_a_short_threshold_never_drops_the_pair_it_was_chosen_at():
    rows = scored((0.95, True), (0.92, False), (0.9004, True), (0.9003, True))
    chosen = lowest_threshold(rows, 2 / 3)
    assert chosen == 0.9 and rates(rows, chosen) == (1.0, 0.25)
    tight = scored((0.95, True), (0.9007, True), (0.9004, False))
    assert lowest_threshold(tight, 1.0) == 0.9007  # 0.90 or 0.900 would admit the wrong pair at 0.9004


def test_refused_pairs_never_count():
    rows = scored((0.99, True)) + [Scored("factual", 0.985, False, False)]
    assert lowest_threshold(rows, 1.0) == 0.99


def test_write_thresholds_keeps_comments_and_layout():
    text = (ROOT / "policies.yaml").read_text()
    written = write_thresholds(text, {"code": 0.971, "factual": 0.9})
    before, after = text.splitlines(), written.splitlines()
    changed = [(b, a) for b, a in zip(before, after) if b != a]
    assert len(before) == len(after)
    assert [a.strip() for _, a in changed] == ["threshold: 0.971", "threshold: 0.9"]
    assert parse_policy(written, "calibrated.yaml").categories["code"].threshold == 0.971


def test_write_thresholds_adds_a_missing_line_and_skips_nested_ones():
    text = ("version: 1\n# why\ncategories:\n  a:   # first\n    verify:\n      threshold: 0.7\n    ttl: 1d\n"
            "  default:\n    ttl: 2d\n")
    written = write_thresholds(text, {"a": 0.9, "default": 0.95})
    assert written == ("version: 1\n# why\ncategories:\n  a:   # first\n    threshold: 0.9\n    verify:\n"
                       "      threshold: 0.7\n    ttl: 1d\n  default:\n    threshold: 0.95\n    ttl: 2d\n")


@pytest.mark.parametrize("uniform", [False, True])
def test_calibrate_end_to_end(tmp_path, capsys, uniform):
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    out = tmp_path / "calibrated.yaml"
    argv = ["calibrate", "--pairs", str(PAIRS), "--target-precision", "0.9", "--policies",
            str(ROOT / "policies.yaml"), "--out", str(out), "--min-pairs", "5"] + (["--uniform"] if uniform else [])
    args = parser.parse_args(argv)
    assert args.run is run
    assert run(args) == 0
    policy = load_policy(out)
    shown = capsys.readouterr().out
    assert "overall" in shown and "false-hit rate" in shown
    assert (ROOT / "policies.yaml").read_text().count("#") == out.read_text().count("#")
    thresholds = {n: c.threshold for n, c in policy.categories.items() if c.cacheable}
    if uniform:
        assert len({t for n, t in thresholds.items() if not policy.categories[n].ic}) == 1
