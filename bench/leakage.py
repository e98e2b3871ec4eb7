"""Find quotes of a workload's measurement half in the code, tests and data that rules are made of.

Rules, tests and examples come from the calibration half (half 0 of `bench/heldout.py`) only: a
test or a docstring that quotes a measured question shapes the product around the very queries
that grade it. This lists every string literal, comment and data line under the scanned folders
that matches a query of a measurement half (the same text once case, punctuation and white space
are normalised; a longer text that contains it; or a near copy of it), says whether that text also
occurs in the calibration half (then it is fine), and exits 1 when a measurement-only quote is left.
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import re
import sys
import tokenize
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from pathlib import Path

from rich.table import Table

from bench.heldout import HELDOUT, TRAIN, labeled_pairs, split_stream
from bench.output import console
from bench.paths import add_workloads, workload, workloads_dir

SCANNED = ("tests", "verify", "categories", "policy", "index", "proxy", "testing")
DATA_SUFFIXES = (".jsonl", ".json", ".yaml", ".yml", ".txt", ".md")
MIN_CHARS = 20  # a shorter text is matched only when the whole quote is that text
APOSTROPHES = re.compile(r"['\u2019]")
PUNCTUATION = re.compile(r"[\W_]+")


def norm(text: str) -> str:
    """Lower case, no apostrophes, other punctuation as space, single spaces: what quotes and questions
    are compared in."""
    return PUNCTUATION.sub(" ", APOSTROPHES.sub("", unicodedata.normalize("NFKC", text).lower())).strip()


def edits_allowed(length: int) -> int:
    """How many characters a near copy may differ by: a typo or an article ("a hacker" / "an hacker"),
    not a word of content ("in Africa" / "in the US")."""
    return max(2, length // 10)


def unmatched(a: str, b: str) -> int:
    """Characters of `a` and `b`, spaces left out, outside their longest common blocks."""
    a, b = a.replace(" ", ""), b.replace(" ", "")
    common = sum(block.size for block in SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks())
    return len(a) + len(b) - 2 * common


@dataclass(frozen=True)
class Quote:
    path: str
    line: int
    kind: str  # "literal", "comment" or "data"
    text: str
    last: int = 0  # the last line of lines joined into one quote; 0 for a line or a literal

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}" + (f"-{self.last}" if self.last else "")


@dataclass(frozen=True)
class Match:
    how: str  # "same", "contains" or "near"
    text: str  # the normalised question
    edits: int  # characters that differ: 0 but for a near copy


@dataclass(frozen=True)
class Finding:
    quote: Quote
    workload: str
    match: Match
    in_calibration: bool


class Half:
    """The normalised query texts of one half of a workload, indexed for the three kinds of match."""

    def __init__(self, texts: Iterable[str]) -> None:
        self.texts = sorted({t for t in map(norm, texts) if t})
        self.exact = set(self.texts)
        self.lengths = sorted({t.count(" ") + 1 for t in self.texts if len(t) >= MIN_CHARS})
        self.postings: dict[str, set[int]] = {}
        for i, text in enumerate(self.texts):
            for word in set(text.split()):
                self.postings.setdefault(word, set()).add(i)

    def matches(self, quote: str) -> list[Match]:
        """Every question `quote` is, contains at word boundaries, or nearly copies."""
        found = [Match("same", quote, 0)] if quote in self.exact else []
        found += [Match("contains", span, 0) for span in self.contained(quote) if span != quote]
        if not found and len(quote) >= MIN_CHARS:
            found += self.near(quote)
        return found

    def contained(self, quote: str) -> set[str]:
        """The questions (of MIN_CHARS or more) that are a run of whole words of `quote`."""
        words = [(m.start(), m.end()) for m in re.finditer(r"\S+", quote)]
        spans = set()
        for i, (start, _) in enumerate(words):
            for length in self.lengths:
                if i + length > len(words):
                    break
                span = quote[start:words[i + length - 1][1]]
                if len(span) >= MIN_CHARS and span in self.exact:
                    spans.add(span)
        return spans

    def near(self, quote: str) -> list[Match]:
        """Questions a few characters' edit away, among those that share one of its two rarest words."""
        words = sorted((len(self.postings[w]), w) for w in set(quote.split()) if w in self.postings)
        candidates = set().union(*(self.postings[w] for _, w in words[:2])) if words else set()
        found = []
        for i in candidates:
            text = self.texts[i]
            allowed = edits_allowed(min(len(quote), len(text)))
            if abs(len(quote) - len(text)) <= allowed and (edits := unmatched(quote, text)) <= allowed:
                found.append(Match("near", text, edits))
        return found


def halves(folder: Path) -> tuple[Half, Half]:
    """(calibration, measurement) texts of a workload: its stream's half and its labeled pairs' half."""
    def texts(half: int) -> list[str]:
        pairs = labeled_pairs(folder, half)
        return [row["text"] for row in split_stream(folder, half)] + [p[s] for p in pairs for s in ("a", "b")]
    return Half(texts(TRAIN)), Half(texts(HELDOUT))


def lines_and_runs(name: str, kind: str, lines: Iterable[tuple[int, str]]) -> Iterator[Quote]:
    """Each line, and each run of consecutive lines joined: a question wrapped over two lines."""
    run: list[tuple[int, str]] = []
    for number, text in [*lines, (-1, "")]:
        if text.strip():
            yield Quote(name, number, kind, text)
        if run and (number != run[-1][0] + 1 or not text.strip()):
            if len(run) > 1:
                yield Quote(name, run[0][0], kind, " ".join(t for _, t in run), run[-1][0])
            run = []
        if text.strip():
            run.append((number, text))


def python_quotes(path: Path, name: str) -> Iterator[Quote]:
    """String literals (docstrings and f-string parts included) and comments."""
    source = path.read_text(encoding="utf-8")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield Quote(name, node.lineno, "literal", node.value)
    comments = [(token.start[0], token.string.lstrip("#"))
                for token in tokenize.generate_tokens(io.StringIO(source).readline) if token.type == tokenize.COMMENT]
    yield from lines_and_runs(name, "comment", comments)


def strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def data_quotes(path: Path, name: str) -> Iterator[Quote]:
    """Each string value of a JSON Lines row; each line and run of lines of another data file."""
    lines = list(enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1))
    if path.suffix != ".jsonl":
        yield from lines_and_runs(name, "data", lines)
        return
    for number, line in lines:
        try:
            values = list(strings(json.loads(line))) if line.strip() else []
        except ValueError:
            values = [line]
        for value in values:
            yield Quote(name, number, "data", value)


def quotes(root: Path, folders: Sequence[str]) -> Iterator[Quote]:
    for folder in folders:
        top = root / folder
        for path in [top] if top.is_file() else sorted(top.rglob("*")):
            if not path.is_file() or "__pycache__" in path.parts:
                continue
            name = path.relative_to(root).as_posix()
            if path.suffix == ".py":
                yield from python_quotes(path, name)
            elif path.suffix in DATA_SUFFIXES:
                yield from data_quotes(path, name)


def findings(root: Path, folders: Sequence[str], workloads: dict[str, tuple[Half, Half]]) -> list[Finding]:
    found = []
    for quote in quotes(root, folders):
        text = norm(quote.text)
        if not text:
            continue
        for name, (calibration, measurement) in workloads.items():
            for match in measurement.matches(text):
                fine = match.text in calibration.exact or (
                    match.how == "near" and any(m.edits <= match.edits for m in calibration.matches(text)))
                found.append(Finding(quote, name, match, fine))
    return [f for f in found if not any(within(g.quote, f.quote) and (g.workload, g.match.text) == (f.workload, f.match.text)
                                        for g in found)]


def within(inner: Quote, outer: Quote) -> bool:
    """Whether `inner` is one of the lines joined into `outer` (whose finding it then repeats)."""
    return (bool(outer.last) and not inner.last and inner.path == outer.path and inner.kind == outer.kind
            and outer.line <= inner.line <= outer.last)


def workload_folders(given: Path | None, names: Sequence[str] | None) -> list[Path]:
    if names:
        return [workload(given, name) for name in names]
    return sorted(p for p in workloads_dir(given).iterdir() if (p / "stream.jsonl").exists())


def short(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_workloads(parser)
    parser.add_argument("--workload", action="append",
                        help="a workload's name or folder, repeatable (default: every one with a stream)")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                        help="the repository to scan (default: this one)")
    parser.add_argument("--folders", default=",".join(SCANNED), help="comma-separated folders (or files) under --root")
    args = parser.parse_args(argv)
    workloads = {path.name: halves(path) for path in workload_folders(args.workloads, args.workload)}
    found = findings(args.root, [f for f in args.folders.split(",") if f], workloads)
    table = Table(title="quotes of a measurement half")
    for column in ("where", "kind", "workload", "match", "in calibration", "quote", "measured query"):
        table.add_column(column)
    for f in found:
        how = f.match.how if f.match.how != "near" else f"near ({f.match.edits})"
        table.add_row(f.quote.where, f.quote.kind, f.workload, how,
                      "yes" if f.in_calibration else "NO", short(f.quote.text), short(f.match.text))
    console().print(table)
    leaks = [f for f in found if not f.in_calibration]
    print(f"{len(found)} quotes of a measurement half, {len(leaks)} of them in no calibration text "
          f"({', '.join(workloads)}; {args.folders})")
    return 1 if leaks else 0


if __name__ == "__main__":
    sys.exit(main())
