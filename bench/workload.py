"""Queries to replay, in the workloads format (`../shared/workloads/README.md`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.heldout import load_split, read_jsonl

QQP_DEV = Path(__file__).parents[1] / "../shared/workloads/qqp-dev"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--stream", type=Path, help="a stream.jsonl to replay")
    source.add_argument("--heldout", nargs="?", const=QQP_DEV, type=Path, metavar="WORKLOAD",
                        help="replay the held-out half of a workload folder (default qqp-dev), "
                             "the half no threshold or verifier was fitted on")
    parser.add_argument("--limit", type=int, help="replay only the first N queries")


def load(args: argparse.Namespace) -> tuple[str, list[dict]]:
    """(a name for the workload, its queries in arrival order)."""
    if args.stream is not None:
        name, queries = str(args.stream), read_jsonl(args.stream)
    else:
        name, queries = f"{args.heldout} (held-out half)", load_split(args.heldout)[1]
    return name, queries[: args.limit] if args.limit else queries
