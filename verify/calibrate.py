"""`catcache calibrate`: per-category thresholds from labeled pairs, for a target precision.

A threshold that is right for chit-chat serves wrong answers for code, and no one can guess the
right numbers. Given pairs labeled equivalent or not (the workloads format), this classifies each
pair as the proxy would (on text `a`, the cached side), scores it as the proxy would (similarity,
then the category's verifier when it is on) and picks, per category, the lowest threshold whose
false-hit rate on those pairs is certified within 1 - precision: the upper bound of a 90%
confidence interval, not the rate seen, so 20 lucky pairs certify nothing. A category whose own
pairs certify no threshold gets the one certified on all pairs pooled; no threshold goes above
0.995, where only case and punctuation variants of a cached text would hit. The result is
written into a copy of the policy file with only the `threshold:` values changed, so comments
and layout survive.

Labels have errors too, and a labeled set whose errors exceed 1 - precision could certify no
threshold at all, however good the cache. Each source's error rate is estimated where the answer
is not in doubt: pairs at cosine 0.99 or more that the verifier accepts (the same question, up to
case, punctuation or a word of filler). The lower end of its confidence interval is the share of
"different" labels a perfect cache would still get there, and that many expected label errors are
forgiven among a threshold's accepted pairs before its false-hit rate is certified. Clean labels
(ComQA's: none such) change nothing; QQP's (4% of its labeled pairs at 0.99 are marked different,
and 5 of 46 pairs identical up to punctuation) stop pinning every category at the ceiling.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from catcache.categories.classifier import Classifier, RequestTraits
from catcache.verify.labels import Grader, neighbour_pairs, normalise
from catcache.verify.verifiers import load_verifier
from catcache.policy.loader import load_policy
from catcache.policy.schema import Policy

CONFIDENCE_Z = 1.2816  # one-sided 90%
CEILING = 0.995
NEAR_IDENTICAL = 0.99  # at this cosine a verified pair asks the same question: a "different" label is an error
MIN_NEAR_IDENTICAL = 30  # fewer near-identical pairs estimate no label errors at all
OVERALL = "overall"


@dataclass(frozen=True)
class Scored:
    category: str
    similarity: float
    verified: bool    # the category's verifier accepts (True when verification is off)
    equivalent: bool
    label_noise: float = 0.0  # the estimated share of wrong "different" labels in this pair's source


@dataclass(frozen=True)
class Choice:
    category: str
    old: float
    threshold: float
    pairs: int
    hit_rate: float        # accepted equivalent / equivalent
    false_hit_rate: float  # accepted non-equivalent / accepted
    note: str = ""


def run(pairs: list[Path], stream: list[Path], target_precision: float, policies: Path, out: Path | None = None,
        uniform: bool = False, trust_labels: bool = False, ceiling: float = CEILING) -> int:
    """`catcache calibrate`: write a copy of `policies` with thresholds chosen on the labeled data."""
    if not 0.0 < target_precision <= 1.0:
        raise SystemExit("--target-precision must be in (0, 1]")
    if not pairs and not stream:
        raise SystemExit("give labeled pairs (--pairs) or a labeled stream (--stream), or both")
    from catcache.index.embedder import Embedder

    policy = load_policy(policies)
    encode = Embedder(policy.embedding_model).encode
    sources = {path: read_jsonl(path) for path in pairs}
    for path in stream:
        rows = read_jsonl(path)
        beside = path.parent / "pairs.jsonl"
        grader = Grader.for_rows(rows, read_jsonl(beside) if beside.exists() else [])
        sources[path] = neighbour_pairs(rows, encode, grader)
    scored = []
    for path, labeled_pairs in sources.items():
        mine = score_pairs(policy, labeled_pairs, encode)
        labeled = [s for s, pair in zip(mine, labeled_pairs) if normalise(pair["a"]) != normalise(pair["b"])]
        noise = 0.0 if trust_labels else label_noise(labeled)
        print(f"{path}: {len(labeled_pairs)} labeled pairs, label errors estimated at {noise:.1%}")
        scored += [replace(s, label_noise=noise) for s in mine]
    choices = calibrate(policy, scored, target_precision, ceiling, uniform)
    out = out or policies.with_suffix(".calibrated.yaml")
    text = write_thresholds(policies.read_text(encoding="utf-8"),
                            {c.category: c.threshold for c in choices if c.category != OVERALL})
    out.write_text(text, encoding="utf-8")
    load_policy(out)  # the copy must validate like any policy file
    show(choices, target_precision, len(scored), out)
    return 0


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def score_pairs(policy: Policy, pairs: list[dict], encode: Callable[[list[str]], np.ndarray]) -> list[Scored]:
    """Classify on `a` and score `b` against it, the way the proxy would serve `a`'s answer to `b`."""
    classifier = Classifier.build(policy, encode)
    a = encode([p["a"] for p in pairs])
    b = encode([p["b"] for p in pairs])
    scored = []
    for pair, u, v in zip(pairs, a, b):
        traits = RequestTraits("", "/v1/chat/completions", None, pair["a"], "```" in pair["a"])
        name = classifier.classify(traits, u).category
        category = policy.category(name)
        similarity = float(u @ v)
        verified = True
        if category.verify.enabled:
            verifier = load_verifier(category.verify.verifier)
            verified = verifier.check(pair["b"], pair["a"], similarity, category.verify.threshold).accepted
        scored.append(Scored(name, similarity, verified, bool(pair["equivalent"])))
    return scored


def rates(scored: list[Scored], threshold: float) -> tuple[float, float]:
    """(hit rate, false-hit rate) of serving every verified pair at or above `threshold`."""
    accepted = [s for s in scored if s.verified and s.similarity >= threshold]
    wrong = sum(not s.equivalent for s in accepted)
    equivalent = sum(s.equivalent for s in scored)
    return ((len(accepted) - wrong) / equivalent if equivalent else 0.0,
            wrong / len(accepted) if accepted else 0.0)


def false_rate_bound(wrong: float, accepted: int, z: float = CONFIDENCE_Z) -> float:
    """Upper Wilson bound of a false-hit rate seen as wrong / accepted: how bad it may really be,
    so a threshold backed by 20 pairs is not trusted like one backed by 2,000."""
    return _wilson(wrong, accepted, z) if accepted else 1.0


def _wilson(wrong: float, total: int, z: float) -> float:
    """The Wilson score bound of the rate wrong / total: upper for z > 0, lower for z < 0."""
    seen, spread = wrong / total, z * z / total
    margin = z * math.sqrt(seen * (1 - seen) / total + spread / (4 * total))
    return (seen + spread / 2 + margin) / (1 + spread)


def label_noise(scored: list[Scored]) -> float:
    """How often this source labels the same question "different": the lower Wilson bound of that
    share among verified pairs at NEAR_IDENTICAL or above (0 with too few of them), so noise is
    never overestimated into false hits that go uncounted. Pass only pairs whose label came from
    the source: identical texts are right by definition and would dilute the estimate."""
    near = [s for s in scored if s.verified and s.similarity >= NEAR_IDENTICAL]
    if len(near) < MIN_NEAR_IDENTICAL:
        return 0.0
    return max(0.0, _wilson(sum(not s.equivalent for s in near), len(near), -CONFIDENCE_Z))


def lowest_threshold(scored: list[Scored], target_precision: float) -> float | None:
    """The lowest threshold whose false-hit rate on `scored` is certified within 1 - precision
    (false_rate_bound, after forgiving the label errors each pair's source is expected to have);
    None when none is. It is written short: rounded down to the fewest decimals that admit no
    pair below the lowest one it accepts."""
    allowed = 1.0 - target_precision
    accepted = sorted((s for s in scored if s.verified), key=lambda s: -s.similarity)
    best, below, wrong, forgiven = None, -math.inf, 0, 0.0
    for count, s in enumerate(accepted, start=1):
        wrong += not s.equivalent
        forgiven += s.label_noise
        next_lower = accepted[count].similarity if count < len(accepted) else -math.inf
        if false_rate_bound(max(0.0, wrong - forgiven), count) <= allowed + 1e-12 and next_lower < s.similarity:
            best, below = s.similarity, next_lower
    if best is None:
        return None
    for decimals in range(2, 7):
        short = math.floor(best * 10**decimals) / 10**decimals
        if short > below:
            return short
    return best


def calibrate(policy: Policy, scored: list[Scored], target_precision: float,
              ceiling: float = CEILING, uniform: bool = False) -> list[Choice]:
    """One Choice per cacheable category of the policy, then the overall row."""
    cacheable = [n for n, c in policy.categories.items() if c.cacheable]
    pooled = [s for s in scored if s.category in cacheable]
    shared = lowest_threshold(pooled, target_precision)
    choices, chosen = [], {}
    for name in cacheable:
        category = policy.categories[name]
        mine = [s for s in scored if s.category == name]
        found, note = (shared, "uniform") if uniform else (lowest_threshold(mine, target_precision), "")
        if found is None:
            found, note = shared, "pooled: its own pairs certify none"
        if found is None or found > ceiling:
            found, note = ceiling, f"ceiling: nothing certified below {ceiling:g}"
        floor = category.ic.low + 0.001 if category.ic else 0.0
        if found < floor:
            found, note = floor, "raised above ic.low"
        chosen[name] = found
        hit, false = rates(mine, found)
        choices.append(Choice(name, category.threshold, found, len(mine), hit, false, note))
    accepted = [s for s in pooled if s.verified and s.similarity >= chosen[s.category]]
    wrong = sum(not s.equivalent for s in accepted)
    equivalent = sum(s.equivalent for s in pooled)
    choices.append(Choice(OVERALL, float("nan"), float("nan"), len(pooled),
                          (len(accepted) - wrong) / equivalent if equivalent else 0.0,
                          wrong / len(accepted) if accepted else 0.0))
    return choices


_CATEGORY = re.compile(r"^(?P<indent>[ \t]+)(?P<name>[A-Za-z0-9_.-]+):\s*(#.*)?$")
_THRESHOLD = re.compile(r"^(?P<head>[ \t]+threshold:[ \t]*)(?P<value>[0-9.]+)(?P<tail>.*)$")


def write_thresholds(text: str, thresholds: dict[str, float]) -> str:
    """`text` with each named category's own `threshold:` value replaced (or added after the
    category's first line when it has none); nothing else changes."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if re.match(r"^categories:\s*(#.*)?$", line)), None)
    if start is None:
        raise ValueError("no top-level 'categories:' block in the policy file")
    blocks: dict[str, tuple[int, int, str]] = {}  # name -> (header line, end line, child indent)
    indent, current = None, None
    end = len(lines)
    for i in range(start + 1, len(lines)):
        line = lines[i]
        if line.strip() == "" or line.lstrip().startswith("#"):
            continue
        if not line[0].isspace():
            end = i
            break
        found = _CATEGORY.match(line)
        if found and (indent is None or found["indent"] == indent):
            indent = found["indent"]
            current = found["name"]
            blocks[current] = (i, i + 1, "")
        elif current is not None:
            header, _, child = blocks[current]
            child = child or line[: len(line) - len(line.lstrip())]
            blocks[current] = (header, i + 1, child)
    inserts: list[tuple[int, str]] = []
    for name, value in thresholds.items():
        if name not in blocks:
            raise ValueError(f"category '{name}' is not in the policy file's categories block")
        header, stop, child = blocks[name]
        child = child or (indent or "") + "  "
        for i in range(header + 1, min(stop, end)):
            found = _THRESHOLD.match(lines[i].rstrip("\n"))
            if found and lines[i].startswith(child + "threshold:"):
                newline = "\n" if lines[i].endswith("\n") else ""
                lines[i] = f"{found['head']}{value:g}{found['tail']}{newline}"
                break
        else:
            inserts.append((header + 1, f"{child}threshold: {value:g}\n"))
    for at, line in sorted(inserts, reverse=True):
        lines.insert(at, line)
    return "".join(lines)


def show(choices: list[Choice], target_precision: float, pairs: int, out: Path) -> None:
    table = Table(title=f"calibrated on {pairs} pairs for precision {target_precision:g} "
                        f"(false-hit rate <= {1 - target_precision:.1%})")
    for column, justify in (("category", "left"), ("threshold", "right"), ("pairs", "right"),
                            ("hit rate", "right"), ("false-hit rate", "right"), ("note", "left")):
        table.add_column(column, justify=justify)
    for c in choices:
        if c.category == OVERALL:
            table.add_section()
            table.add_row(c.category, "", str(c.pairs), f"{c.hit_rate:.1%}", f"{c.false_hit_rate:.1%}", "")
            continue
        moved = f"{c.old:g} -> {c.threshold:g}" if c.threshold != c.old else f"{c.threshold:g}"
        table.add_row(c.category, moved, str(c.pairs), f"{c.hit_rate:.1%}", f"{c.false_hit_rate:.1%}", c.note)
    console = Console()
    console.print(table)
    console.print(f"wrote {out}")
