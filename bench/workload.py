"""Queries to replay, in the workloads format (`../shared/workloads/README.md`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.heldout import HELDOUT, labeled_pairs, read_jsonl, split_stream
from bench.paths import add_workloads, workload
from catcache.verify.labels import Grader, answers_agree, normalise


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--stream", type=Path, help="a stream.jsonl to replay")
    source.add_argument("--heldout", nargs="?", const="qqp-dev", metavar="WORKLOAD",
                        help="replay the held-out half of a workload, by name or folder (default qqp-dev), "
                             "the half no threshold or verifier was fitted on")
    parser.add_argument("--limit", type=int, help="replay only the first N queries")
    add_workloads(parser)


def load(args: argparse.Namespace) -> tuple[str, list[dict], Grader]:
    """(a name for the workload, its queries in arrival order, the rule that grades a hit).

    Rows with answers (comqa-dev) or without a `pairs.jsonl` beside them are completely labeled;
    otherwise (qqp-dev) hits are graded only where the two questions form a labeled pair."""
    if args.stream is not None:
        pairs_file = args.stream.parent / "pairs.jsonl"
        name, queries = str(args.stream), read_jsonl(args.stream)
        pairs = read_jsonl(pairs_file) if pairs_file.exists() else []
    else:
        folder = workload(args.workloads, args.heldout)
        name, queries = f"{folder} (held-out half)", split_stream(folder, HELDOUT)
        pairs = labeled_pairs(folder, HELDOUT)
    queries = queries[: args.limit] if args.limit else queries
    return name, queries, Grader.for_rows(queries, pairs)


def servable(grader: Grader, rows: list[dict]) -> list[bool]:
    """For each row, whether an earlier row could have answered it right (the hit rate's denominator)."""
    found, groups, answers, texts = [], set(), [], set()
    for row in rows:
        text = normalise(row["text"])
        if grader.partial:
            found.append(text in texts or bool(grader.partners(text) & texts))
        else:
            found.append(row["group"] in groups or text in texts
                         or ("answer" in row and any(answers_agree(row["answer"], a) for a in answers)))
            groups.add(row["group"])
            if "answer" in row:
                answers.append(row["answer"])
        texts.add(text)
    return found
