"""Queries to replay, in the workloads format (`../shared/workloads/README.md`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.heldout import HELDOUT, labeled_pairs, read_jsonl, split_stream
from catcache.verify.labels import Grader

QQP_DEV = Path(__file__).parents[1] / "../shared/workloads/qqp-dev"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--stream", type=Path, help="a stream.jsonl to replay")
    source.add_argument("--heldout", nargs="?", const=QQP_DEV, type=Path, metavar="WORKLOAD",
                        help="replay the held-out half of a workload folder (default qqp-dev), "
                             "the half no threshold or verifier was fitted on")
    parser.add_argument("--limit", type=int, help="replay only the first N queries")


def load(args: argparse.Namespace) -> tuple[str, list[dict], Grader]:
    """(a name for the workload, its queries in arrival order, the rule that grades a hit).

    Rows with answers (comqa-dev) or without a `pairs.jsonl` beside them are completely labeled;
    otherwise (qqp-dev) hits are graded only where the two questions form a labeled pair."""
    if args.stream is not None:
        pairs_file = args.stream.parent / "pairs.jsonl"
        name, queries = str(args.stream), read_jsonl(args.stream)
        pairs = read_jsonl(pairs_file) if pairs_file.exists() else []
    else:
        name, queries = f"{args.heldout} (held-out half)", split_stream(args.heldout, HELDOUT)
        pairs = labeled_pairs(args.heldout, HELDOUT)
    queries = queries[: args.limit] if args.limit else queries
    return name, queries, Grader.for_rows(queries, pairs)
