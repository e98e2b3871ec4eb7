"""Split a labeled workload in two halves so nothing trained or calibrated is measured on itself.

`stream.jsonl` and `pairs.jsonl` of a workload are cut from the same pairs, so a verifier trained
on pairs and measured on the stream would be graded on its own training data. Pairs are split by
a hash of their normalised texts (stable across runs, machines and file order): half 0 trains and
calibrates, half 1 measures. A text can occur in several pairs (Quora repeats questions); such a
text may belong to both halves, and the measured stream drops it, so no text that training saw
is ever replayed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from bench.paths import add_workloads, workload
from catcache.verify.labels import Grader, neighbour_pairs, normalise

TRAIN, HELDOUT = 0, 1


def pair_half(a: str, b: str) -> int:
    """0 or 1, the same for (a, b) and (b, a) and for texts that differ in case or white space."""
    first, second = sorted((normalise(a), normalise(b)))
    digest = hashlib.sha256(f"{first}\x00{second}".encode()).digest()
    return digest[0] & 1


def group_half(group: str) -> int:
    """0 or 1 for a stream workload whose labels are complete (comqa-dev): whole groups fall on one
    side, so no paraphrase of a measured query was ever calibrated on."""
    return hashlib.sha256(group.encode()).digest()[0] & 1


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def pairs_of_half(pairs: Iterable[dict], half: int) -> list[dict]:
    return [p for p in pairs if pair_half(p["a"], p["b"]) == half]


def texts_by_half(pairs: Iterable[dict]) -> dict[int, set[str]]:
    """The normalised texts that occur in a pair of each half."""
    seen: dict[int, set[str]] = {TRAIN: set(), HELDOUT: set()}
    for p in pairs:
        half = pair_half(p["a"], p["b"])
        seen[half].update((normalise(p["a"]), normalise(p["b"])))
    return seen


def heldout_stream(stream: Iterable[dict], pairs: Iterable[dict], half: int = HELDOUT) -> list[dict]:
    """The stream's queries whose text occurs only in pairs of `half`, in their original order.

    Groups stay as the stream labels them; a group cut down to one query simply cannot repeat.
    """
    seen = texts_by_half(pairs)
    other = seen[1 - half]
    return [q for q in stream if normalise(q["text"]) in seen[half] and normalise(q["text"]) not in other]


def completely_labeled(stream: list[dict]) -> bool:
    """Rows with answers (comqa-dev) label every pair; QQP's groups label only within each pair."""
    return any("answer" in row for row in stream)


def stream_half(stream: list[dict], half: int) -> list[dict]:
    return [row for row in stream if group_half(row["group"]) == half]


def split_stream(workload: str | Path, half: int) -> list[dict]:
    """One half of a workload's stream: by group where labels are complete, else by labeled pair."""
    folder = Path(workload)
    stream = read_jsonl(folder / "stream.jsonl")
    if completely_labeled(stream):
        return stream_half(stream, half)
    return heldout_stream(stream, read_jsonl(folder / "pairs.jsonl"), half)


def labeled_pairs(workload: str | Path, half: int) -> list[dict]:
    """The labeled pairs of `pairs.jsonl` that belong to `half` (both texts' groups, or the pair's hash)."""
    folder = Path(workload)
    pairs = read_jsonl(folder / "pairs.jsonl") if (folder / "pairs.jsonl").exists() else []
    stream = read_jsonl(folder / "stream.jsonl")
    if not completely_labeled(stream):
        return pairs_of_half(pairs, half)
    halves = {normalise(row["text"]): group_half(row["group"]) for row in stream}
    return [p for p in pairs if halves.get(normalise(p["a"])) == halves.get(normalise(p["b"])) == half]


def training_pairs(workload: str | Path, encode: Callable[[list[str]], np.ndarray]) -> list[dict]:
    """Half 0 of a workload as labeled pairs: its labeled pairs and its stream's graded neighbours."""
    folder = Path(workload)
    stream = split_stream(folder, TRAIN)
    pairs = labeled_pairs(folder, TRAIN)
    return pairs + neighbour_pairs(stream, encode, Grader.for_rows(stream, pairs))


def main() -> None:
    parser = argparse.ArgumentParser(description="Write a workload's calibration half (stream.jsonl and pairs.jsonl) "
                                                 "into a folder, for `catcache calibrate --stream FOLDER/stream.jsonl`.")
    parser.add_argument("--workload", default="comqa-dev", help="a workload's name or folder")
    add_workloads(parser)
    parser.add_argument("--out", type=Path, required=True, help="a folder")
    args = parser.parse_args()
    folder = workload(args.workloads, args.workload)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("stream", split_stream(folder, TRAIN)), ("pairs", labeled_pairs(folder, TRAIN))):
        (args.out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        print(f"{len(rows)} half-{TRAIN} {name} rows -> {args.out / name}.jsonl")


if __name__ == "__main__":
    main()
