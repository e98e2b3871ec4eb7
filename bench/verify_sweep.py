"""Replay the held-out half of a workload through a simulated semantic cache, for each threshold
and verifier, and report hit rate and false-hit rate per category.

    python -m bench.verify_sweep [--workload ../shared/workloads/qqp-dev] [--policies policies.yaml]

The simulation is the proxy's semantic tier without Redis or HTTP: each query is classified by
catcache's classifier, compared with the most similar *cached* query of its category (a query
is cached when it missed; a served hit is not stored again), and served when the similarity
reaches the threshold and the verifier accepts. A hit is false when the two queries' groups
differ; hit rate = correct hits / queries whose group appeared before. Only the half-1 stream
(bench/heldout.py) is replayed, so verifiers trained and thresholds calibrated on half 0 are
measured on texts they never saw. It is for choosing; the bench replay through the running proxy
is the final word.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from bench.heldout import HELDOUT, load_split, normalise, pairs_of_half, read_jsonl
from catcache.categories.classifier import Classifier, RequestTraits
from catcache.verify.verifiers import Verifier, load_verifier
from catcache.policy.loader import load_policy

ROOT = Path(__file__).parents[1]


@dataclass
class Replayed:
    """One workload, classified and embedded once, replayed under many settings."""

    texts: list[str]
    groups: list[str]
    labels: list[str]            # the workload's own category, for reporting only
    categories: list[str]        # catcache's classification, which picks the index
    similarity: dict[str, np.ndarray]  # per catcache category: query x query cosine
    position: list[int]          # each query's row in its category's matrix
    members: dict[str, list[int]] = field(default_factory=dict)


def prepare(stream: list[dict], policies: Path) -> Replayed:
    from catcache.index.embedder import Embedder

    embedder = Embedder()
    texts = [q["text"] for q in stream]
    vectors = embedder.encode(texts)
    classifier = Classifier.build(load_policy(policies), embedder.encode)
    categories = [
        classifier.classify(RequestTraits("gpt-4o-mini", "/v1/chat/completions", None, t, "```" in t), v).category
        for t, v in zip(texts, vectors)
    ]
    members: dict[str, list[int]] = defaultdict(list)
    position = []
    for i, category in enumerate(categories):
        position.append(len(members[category]))
        members[category].append(i)
    similarity = {c: vectors[ids] @ vectors[ids].T for c, ids in members.items()}
    return Replayed(texts, [q["group"] for q in stream], [q["category"] for q in stream], categories,
                    similarity, position, dict(members))


@dataclass
class Setting:
    name: str
    thresholds: dict[str, float] | float
    verifier: str = "none"
    verify_threshold: float = 0.5
    verify_in: set[str] | None = None  # categories whose verify is on; None: all

    def threshold(self, category: str) -> float:
        return self.thresholds if isinstance(self.thresholds, float) else self.thresholds.get(category, 1.0)


class LabeledNegativesRefused:
    """A bound, not a verifier: it reads the held-out labels and refuses exactly the pairs a human
    labeled as different questions. The false hits it still lets through are between queries
    nobody labeled, mostly paraphrases from different pairs, which no verifier that judges
    meaning would refuse; so its rows are the best any such verifier can do on this workload."""

    name = "oracle"

    def __init__(self, pairs: list[dict]):
        self._different = {frozenset((normalise(p["a"]), normalise(p["b"]))) for p in pairs if not p["equivalent"]}

    def score(self, query: str, candidate: str, similarity: float) -> float:
        return 0.0 if frozenset((normalise(query), normalise(candidate))) in self._different else 1.0


def replay(data: Replayed, setting: Setting, verifier: Verifier, scores: dict, timings: list[float]) -> dict:
    """Counts per workload category; `scores` memoises the verifier across settings."""
    cached = {c: np.zeros(len(ids), dtype=bool) for c, ids in data.members.items()}
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {"queries": 0, "repeatable": 0, "hits": 0, "false": 0})
    seen: set[str] = set()
    for i, (category, label, group) in enumerate(zip(data.categories, data.labels, data.groups)):
        row = counts[label]
        row["queries"] += 1
        row["repeatable"] += group in seen
        seen.add(group)
        p = data.position[i]
        earlier = np.where(cached[category][:p], data.similarity[category][p, :p], -2.0)
        if p and earlier.max() >= setting.threshold(category):
            j = data.members[category][int(np.argmax(earlier))]
            similarity = float(earlier.max())
            accepted = True
            if setting.verify_in is None or category in setting.verify_in:
                key = (verifier.name, i, j)
                if key not in scores:
                    start = time.perf_counter()
                    scores[key] = verifier.score(data.texts[i], data.texts[j], similarity)
                    timings.append(time.perf_counter() - start)
                accepted = scores[key] >= setting.verify_threshold
            if accepted:
                row["hits"] += 1
                row["false"] += data.groups[j] != group
                continue
        cached[category][p] = True
    return dict(counts)


def summarise(counts: dict) -> dict:
    """Per category and overall: hit rate (correct hits / repeatable) and false-hit rate."""
    rows = dict(counts)
    rows["overall"] = {k: sum(r[k] for r in counts.values()) for k in ("queries", "repeatable", "hits", "false")}
    out = {}
    for name, r in rows.items():
        correct = r["hits"] - r["false"]
        out[name] = {**r, "hit_rate": correct / r["repeatable"] if r["repeatable"] else 0.0,
                     "false_hit_rate": r["false"] / r["hits"] if r["hits"] else 0.0}
    return out


def settings(policies: Path) -> list[Setting]:
    own = own_thresholds(policies, f"{policies.name} thresholds + its verifier")
    found = [Setting(f"uniform {t}", t) for t in (0.90, 0.95, 0.98, 0.99, 0.995, 0.997)]
    found.append(Setting(f"{policies.name} thresholds", own.thresholds))
    found += [Setting(f"lexical-guard @ {t}", t, "lexical-guard") for t in (0.93, 0.95, 0.97, 0.99)]
    found += [Setting(f"pair-classifier {v} @ {t}", t, "pair-classifier", v)
              for t in (0.90, 0.95, 0.98) for v in (0.5, 0.8, 0.9)]
    found += [Setting(f"oracle (refuses labeled non-duplicates) @ {t}", t, "oracle")
              for t in (0.90, 0.95, 0.97, 0.99, 0.995)]
    return found + [own]


def own_thresholds(policies: Path, name: str) -> Setting:
    """The policy file's thresholds with its verifier, as the proxy would run them."""
    policy = load_policy(policies)
    verified = {n: c.verify for n, c in policy.categories.items() if c.cacheable and c.verify.enabled}
    verifier = next(iter(verified.values()), None)
    return Setting(name, {n: c.threshold for n, c in policy.categories.items() if c.cacheable},
                   verifier.verifier if verifier else "none", verifier.threshold if verifier else 0.5, set(verified))


def matching_uniform(data: Replayed, like: Setting, target: float, scores: dict, steps: int = 16) -> Setting:
    """One threshold for every category, with `like`'s verifier, whose overall false-hit rate is
    `target`: the lowest such threshold, found by bisection (the rate falls as the threshold rises)."""
    verifier = load_verifier(like.verifier)
    low, high = 0.80, 1.0
    for _ in range(steps):
        middle = (low + high) / 2
        rates = summarise(replay(data, Setting("", middle, like.verifier, like.verify_threshold), verifier,
                                 scores, []))["overall"]
        low, high = (middle, high) if rates["false_hit_rate"] > target else (low, middle)
    return Setting(f"uniform {high:.4f} + {like.verifier} (same overall false-hit rate)", high, like.verifier,
                   like.verify_threshold)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q) * 1000) if values else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", type=Path, default=ROOT / "../shared/workloads/qqp-dev")
    parser.add_argument("--policies", type=Path, default=ROOT / "policies.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/verify_sweep.json")
    parser.add_argument("--compare", type=Path, action="append", default=[], metavar="POLICIES",
                        help="also replay this policy file's thresholds (e.g. from catcache calibrate) next to "
                             "one uniform threshold at the same overall false-hit rate; repeatable")
    args = parser.parse_args()

    _, stream = load_split(args.workload)
    oracle = LabeledNegativesRefused(pairs_of_half(read_jsonl(args.workload / "pairs.jsonl"), HELDOUT))
    data = prepare(stream, args.policies)
    scores: dict = {}
    timings: dict[str, list[float]] = defaultdict(list)
    results = []
    for setting in settings(args.policies):
        verifier = oracle if setting.verifier == "oracle" else load_verifier(setting.verifier)
        summary = summarise(replay(data, setting, verifier, scores, timings[setting.verifier]))
        results.append({"setting": setting.name, "verifier": setting.verifier, "rates": summary})
    for policies in args.compare:
        calibrated = own_thresholds(policies, f"{policies.name} thresholds + its verifier")
        summary = summarise(replay(data, calibrated, load_verifier(calibrated.verifier), scores, []))
        uniform = matching_uniform(data, calibrated, summary["overall"]["false_hit_rate"], scores)
        for setting, rates in ((calibrated, summary),
                               (uniform, summarise(replay(data, uniform, load_verifier(uniform.verifier), scores, [])))):
            results.append({"setting": setting.name, "verifier": setting.verifier, "rates": rates})
    latency = {name: {"p50_ms": percentile(t, 50), "p99_ms": percentile(t, 99), "calls": len(t)}
               for name, t in timings.items() if t and name != "oracle"}

    labels = sorted({label for r in results for label in r["rates"] if label != "overall"}) + ["overall"]
    table = Table(title=f"held-out half of {args.workload.name}: hit rate / false-hit rate")
    table.add_column("setting")
    for label in labels:
        table.add_column(label, justify="right")
    for r in results:
        cells = [f"{r['rates'][l]['hit_rate']:.1%} / {r['rates'][l]['false_hit_rate']:.1%}"
                 if l in r["rates"] else "-" for l in labels]
        table.add_row(r["setting"], *cells)
    console = Console(width=200)
    console.print(table)
    for name, l in latency.items():
        console.print(f"{name}: p50 {l['p50_ms']:.3f} ms, p99 {l['p99_ms']:.3f} ms over {l['calls']} calls")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"workload": str(args.workload), "policies": str(args.policies),
                                    "stream_queries": len(stream), "results": results, "latency": latency},
                                   indent=1))


if __name__ == "__main__":
    main()
