"""Replay the held-out half of a workload through a simulated semantic cache, for each threshold
and verifier, and report hit rate and false-hit rate per category.

    python -m bench.verify_sweep [--workload ../shared/workloads/qqp-dev] [--policies policies.yaml]

The simulation is the proxy's semantic tier without Redis or HTTP: each query is classified by
catcache's classifier, compared with the most similar *cached* query of its category (a query
is cached when it missed; a served hit is not stored again), and served when the similarity
reaches the threshold and the verifier accepts. Hits are graded by the workload's labels
(verify/labels.py: ComQA's answers, QQP's labeled pairs only); hit rate = correct hits /
servable queries, false-hit rate = false hits / graded hits. Only the half-1 stream
(bench/heldout.py) is replayed, so verifiers trained and thresholds calibrated on half 0 are
measured on texts they never saw. It is for choosing; the bench replay through the running proxy
is the final word.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from bench.heldout import HELDOUT, labeled_pairs, split_stream
from bench.paths import add_workloads, workload
from bench.workload import servable
from catcache.categories.classifier import Classifier, RequestTraits
from catcache.policy.loader import load_policy
from catcache.verify.labels import Grader
from catcache.verify.verifiers import Verifier, load_verifier

ROOT = Path(__file__).parents[1]


@dataclass
class Replayed:
    """One workload, classified and embedded once, replayed under many settings."""

    rows: list[dict]
    texts: list[str]
    servable: list[bool]
    labels: list[str]            # the workload's own category, for reporting only
    categories: list[str]        # catcache's classification, which picks the policy
    similarity: np.ndarray       # query x query cosine


def prepare(stream: list[dict], policies: Path, grader: Grader) -> Replayed:
    from catcache.index.embedder import Embedder

    policy = load_policy(policies)
    embedder = Embedder(policy.embedding_model)
    texts = [q["text"] for q in stream]
    vectors = embedder.encode(texts)
    classifier = Classifier.build(policy, embedder.encode)
    categories = [
        classifier.classify(RequestTraits("gpt-4o-mini", "/v1/chat/completions", None, t, "```" in t), v).category
        for t, v in zip(texts, vectors)
    ]
    return Replayed(stream, texts, servable(grader, stream), [q.get("category", "-") for q in stream], categories,
                    vectors @ vectors.T)


@dataclass
class Setting:
    name: str
    thresholds: dict[str, float] | float
    verifier: str = "none"
    verify_threshold: float = 0.5
    verify_in: set[str] | None = None  # categories whose verify is on; None: all

    def threshold(self, category: str) -> float:
        return self.thresholds if isinstance(self.thresholds, float) else self.thresholds.get(category, 1.0)


def replay(data: Replayed, setting: Setting, verifier: Verifier, scores: dict, timings: list[float],
           grader: Grader) -> dict:
    """Counts per workload category; `scores` memoises the verifier across settings.

    As the proxy does: every cached query is a candidate, judged by the stricter threshold of
    the two queries' categories; the three most similar above it are verified in turn."""
    cached = np.zeros(len(data.texts), dtype=bool)
    thresholds = np.array([setting.threshold(c) for c in data.categories])
    verified = np.array([setting.verify_in is None or c in setting.verify_in for c in data.categories])
    counts: dict[str, dict[str, int]] = defaultdict(
        lambda: {"queries": 0, "repeatable": 0, "hits": 0, "correct": 0, "false": 0})
    for i, label in enumerate(data.labels):
        row = counts[label]
        row["queries"] += 1
        row["repeatable"] += data.servable[i]
        similarity = data.similarity[i, :i]
        passing = cached[:i] & (similarity >= np.maximum(thresholds[i], thresholds[:i]))
        candidates = np.flatnonzero(passing)
        for j in candidates[np.argsort(-similarity[candidates])][:3]:
            if verified[i] or verified[j]:
                key = (verifier.name, i, int(j))
                if key not in scores:
                    start = time.perf_counter()
                    scores[key] = verifier.score(data.texts[i], data.texts[j], float(similarity[j]))
                    timings.append(time.perf_counter() - start)
                if scores[key] < setting.verify_threshold:
                    continue
            right = grader.right(data.rows[i], data.rows[j])
            row["hits"] += 1
            row["correct"] += right is True
            row["false"] += right is False
            break
        else:
            cached[i] = True
    return dict(counts)


def summarise(counts: dict) -> dict:
    """Per category and overall: hit rate (correct hits / repeatable) and false-hit rate."""
    rows = dict(counts)
    rows["overall"] = {k: sum(r[k] for r in counts.values()) for k in ("queries", "repeatable", "hits", "correct",
                                                                       "false")}
    out = {}
    for name, r in rows.items():
        graded = r["correct"] + r["false"]
        out[name] = {**r, "hit_rate": r["correct"] / r["repeatable"] if r["repeatable"] else 0.0,
                     "false_hit_rate": r["false"] / graded if graded else 0.0}
    return out


def settings(policies: Path) -> list[Setting]:
    own = own_thresholds(policies, f"{policies.name} thresholds + its verifier")
    found = [Setting(f"uniform {t}", t) for t in (0.90, 0.92, 0.94, 0.96, 0.98, 0.99)]
    found.append(Setting(f"{policies.name} thresholds, no verifier", own.thresholds))
    found += [Setting(f"lexical-guard @ {t}", t, "lexical-guard") for t in (0.90, 0.92, 0.94, 0.96)]
    found += [Setting(f"pair-classifier {v} @ {t}", t, "pair-classifier", v)
              for t in (0.90, 0.92, 0.94) for v in (0.5, 0.8)]
    return found + [own]


def own_thresholds(policies: Path, name: str) -> Setting:
    """The policy file's thresholds with its verifier, as the proxy would run them."""
    policy = load_policy(policies)
    verified = {n: c.verify for n, c in policy.categories.items() if c.cacheable and c.verify.enabled}
    verifier = next(iter(verified.values()), None)
    return Setting(name, {n: c.threshold for n, c in policy.categories.items() if c.cacheable},
                   verifier.verifier if verifier else "none", verifier.threshold if verifier else 0.5, set(verified))


def matching_uniform(data: Replayed, like: Setting, target: float, scores: dict, grader: Grader,
                     steps: int = 16) -> Setting:
    """One threshold for every category, with `like`'s verifier, whose overall false-hit rate is
    `target`: the lowest such threshold, found by bisection (the rate falls as the threshold rises)."""
    verifier = load_verifier(like.verifier)
    low, high = 0.80, 1.0
    for _ in range(steps):
        middle = (low + high) / 2
        rates = summarise(replay(data, Setting("", middle, like.verifier, like.verify_threshold), verifier,
                                 scores, [], grader))["overall"]
        low, high = (middle, high) if rates["false_hit_rate"] > target else (low, middle)
    return Setting(f"uniform {high:.4f} + {like.verifier} (same overall false-hit rate)", high, like.verifier,
                   like.verify_threshold)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q) * 1000) if values else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="comqa-dev", help="a workload's name or folder")
    add_workloads(parser)
    parser.add_argument("--policies", type=Path, default=ROOT / "policies.yaml")
    parser.add_argument("--out", type=Path, help="default: bench/results/verify_sweep-<workload>.json")
    parser.add_argument("--compare", type=Path, action="append", default=[], metavar="POLICIES",
                        help="also replay this policy file's thresholds (e.g. from catcache calibrate) next to "
                             "one uniform threshold at the same overall false-hit rate; repeatable")
    args = parser.parse_args()
    args.workload = workload(args.workloads, args.workload)

    stream = split_stream(args.workload, HELDOUT)
    grader = Grader.for_rows(stream, labeled_pairs(args.workload, HELDOUT))
    data = prepare(stream, args.policies, grader)
    scores: dict = {}
    timings: dict[str, list[float]] = defaultdict(list)
    results = []
    for setting in settings(args.policies):
        summary = summarise(replay(data, setting, load_verifier(setting.verifier), scores, timings[setting.verifier],
                                   grader))
        results.append({"setting": setting.name, "verifier": setting.verifier, "rates": summary})
    for policies in args.compare:
        calibrated = own_thresholds(policies, f"{policies.name} thresholds + its verifier")
        summary = summarise(replay(data, calibrated, load_verifier(calibrated.verifier), scores, [], grader))
        uniform = matching_uniform(data, calibrated, summary["overall"]["false_hit_rate"], scores, grader)
        uniform_rates = summarise(replay(data, uniform, load_verifier(uniform.verifier), scores, [], grader))
        for setting, rates in ((calibrated, summary), (uniform, uniform_rates)):
            results.append({"setting": setting.name, "verifier": setting.verifier, "rates": rates})
    latency = {name: {"p50_ms": percentile(t, 50), "p99_ms": percentile(t, 99), "calls": len(t)}
               for name, t in timings.items() if t}

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
    out = args.out or ROOT / f"bench/results/verify_sweep-{args.workload.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"workload": str(args.workload), "policies": str(args.policies),
                                    "stream_queries": len(stream), "results": results, "latency": latency},
                                   indent=1))


if __name__ == "__main__":
    main()
