"""bench.leakage finds a quote of a measurement half planted in a tiny source tree, and only that."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import leakage
from bench.heldout import HELDOUT, TRAIN, group_half

CALIBRATED = "How many moons does Jupiter have?"
MEASURED = "Which river flows through the city of Vienna?"


def group_of(half: int, start: int) -> str:
    return next(f"g{i}" for i in range(start, 1000) if group_half(f"g{i}") == half)


@pytest.fixture()
def workloads(tmp_path: Path) -> Path:
    """A completely labeled workload (rows with answers): one group in each half."""
    rows = [{"id": "q1", "text": CALIBRATED, "group": group_of(TRAIN, 0), "category": "factual", "answer": "95"},
            {"id": "q2", "text": MEASURED, "group": group_of(HELDOUT, 0), "category": "factual", "answer": "Danube"}]
    folder = tmp_path / "workloads" / "tiny"
    folder.mkdir(parents=True)
    (folder / "stream.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return tmp_path / "workloads"


def source(tmp_path: Path, test_file: str) -> Path:
    root = tmp_path / "repo"
    (root / "tests").mkdir(parents=True)
    (root / "tests" / "test_planted.py").write_text(test_file, encoding="utf-8")
    return root


def run(workloads: Path, root: Path) -> int:
    return leakage.main(["--workloads", str(workloads), "--root", str(root), "--folders", "tests"])


def test_a_planted_measurement_quote_is_found_and_fails_the_run(
        workloads: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    planted = ('"""Calibrated on ' + repr(CALIBRATED) + '."""\n\n'
               'def test_it() -> None:\n'
               '    assert len("which  RIVER flows through the city of vienna") > 0\n')
    assert run(workloads, source(tmp_path, planted)) == 1
    output = capsys.readouterr().out
    assert "tests/test_planted.py:4" in output and "1 of them in no calibration text" in output
    assert "tests/test_planted.py:1" not in output  # a calibration question is not a finding


def test_each_kind_of_match_in_literals_comments_and_data(workloads: Path, tmp_path: Path) -> None:
    root = source(tmp_path, "# asked: which river flows through\n# the city of vienna? twice\n"
                            "X = 'Which river flows thru the city of Vienna?'\n")
    (root / "tests" / "pairs.jsonl").write_text(json.dumps({"a": MEASURED, "b": "x"}) + "\n", encoding="utf-8")
    (root / "tests" / "notes.md").write_text(f"Asked often:\n{MEASURED}\nand more.\n", encoding="utf-8")
    half = leakage.halves(workloads / "tiny")
    found = leakage.findings(root, ["tests"], {"tiny": half})
    assert sorted((f.quote.where, f.quote.kind, f.match.how) for f in found) == [
        ("tests/notes.md:2", "data", "same"),  # once: the paragraph that holds the line repeats it
        ("tests/pairs.jsonl:1", "data", "same"),
        ("tests/test_planted.py:1-2", "comment", "contains"),  # wrapped over two comment lines
        ("tests/test_planted.py:3", "literal", "near"),
    ]
    assert not any(f.in_calibration for f in found)


def test_a_clean_tree_passes_and_a_different_question_of_the_same_shape_is_no_quote(
        workloads: Path, tmp_path: Path) -> None:
    clean = f"Q = {CALIBRATED!r}\nR = 'Which river flows through the city of Budapest?'\n"
    assert run(workloads, source(tmp_path, clean)) == 0
