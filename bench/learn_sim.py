"""Simulate the self-calibrating cache on a stream from a cold start, in seconds, to tune its method.

    python -m bench.learn_sim --workload comqa-dev --half 0

The proxy's semantic tier without Redis or HTTP, as bench/verify_sweep.py does it, plus what the
learner does: near misses in the band under the live threshold and explored would-be hits are
judged (the answers of a backend that answers every query of a group the same: ComQA by its
answer set, QQP by its group), thresholds move per `verify/learning.py`, and the running estimate
is compared with the rate the labels grade. Embeddings are computed once per workload half and
kept under bench/results/tmp/. Tune on half 0 (calibration); half 1 is for the final replay.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench import output, paths, workload
from bench.heldout import labeled_pairs, split_stream
from catcache.categories.classifier import Classifier, RequestTraits
from catcache.policy.loader import load_policy
from catcache.verify import learning
from catcache.verify.labels import Grader, normalise
from catcache.verify.question import answer_kind
from catcache.verify.verifiers import load_verifier

ROOT = Path(__file__).parents[1]
TMP = ROOT / "bench/results/tmp"


@dataclass
class Prepared:
    rows: list[dict]
    texts: list[str]
    answers: list[str]         # what the group-answering test backend says
    categories: list[str]
    similarity: np.ndarray
    grader: Grader
    servable: list[bool]


def prepare(workloads: list[Path], half: int, policies: Path) -> Prepared:
    """Rows of each workload's half (interleaved when several), embedded and classified once."""
    streams = [split_stream(w, half) for w in workloads]
    pairs = [p for w in workloads for p in labeled_pairs(w, half)]
    rows = interleave(streams)
    name = "+".join(w.name for w in workloads)
    cache = TMP / f"learn_sim-{name}-h{half}.npz"
    texts = [r["text"] for r in rows]
    if cache.exists():
        saved = np.load(cache, allow_pickle=False)
        vectors, categories = saved["vectors"], list(saved["categories"])
    else:
        from catcache.index.embedder import Embedder

        policy = load_policy(policies)
        embedder = Embedder(policy.embedding_model)
        vectors = embedder.encode(texts)
        classifier = Classifier.build(policy, embedder.encode)
        categories = [classifier.classify(RequestTraits("test-model", "/v1/chat/completions", None, t, "```" in t),
                                          v).category for t, v in zip(texts, vectors)]
        TMP.mkdir(parents=True, exist_ok=True)
        np.savez(cache, vectors=vectors, categories=np.array(categories))
    answers = [normalise(r["answer"]) if "answer" in r else f"{r.get('source', '')}{r['group']}" for r in rows]
    grader = Grader.for_rows(rows, pairs) if len(workloads) == 1 else MixedGrader(streams, workloads, half)
    servable = grader.servable(rows) if isinstance(grader, MixedGrader) else workload.servable(grader, rows)
    return Prepared(rows, texts, answers, categories, vectors @ vectors.T, grader, servable)


def with_repeats(data: Prepared, share: float, seed: int = 7) -> Prepared:
    """The stream with exact repeats put in: after each query, with probability `share`, one
    earlier query again, word for word. Live traffic repeats itself; these workloads hardly do,
    and repeats are what measures the judge's noise (Settings.judge_noise)."""
    rng = random.Random(seed)
    order: list[int] = []
    for i in range(len(data.rows)):
        order.append(i)
        if rng.random() < share:
            order.append(order[rng.randrange(len(order))])
    return Prepared([data.rows[i] for i in order], [data.texts[i] for i in order],
                    [data.answers[i] for i in order], [data.categories[i] for i in order],
                    data.similarity[np.ix_(order, order)], data.grader,
                    [data.servable[i] or k > order.index(i) for k, i in enumerate(order)])


def interleave(streams: list[list[dict]]) -> list[dict]:
    """One stream from several: rows taken in turn in proportion to each stream's length, so both
    run from start to end together; each row remembers its source for its group and grading."""
    if len(streams) == 1:
        return streams[0]
    tagged = [[dict(row, source=f"s{i}:") for row in stream] for i, stream in enumerate(streams)]
    order = sorted(((j + 0.5) / len(s), i, j) for i, s in enumerate(tagged) for j in range(len(s)))
    return [tagged[i][j] for _, i, j in order]


class MixedGrader:
    """Each source's own grader; a hit across sources is false."""

    def __init__(self, streams: list[list[dict]], workloads: list[Path], half: int):
        self.graders = [Grader.for_rows(s, labeled_pairs(w, half)) for s, w in zip(streams, workloads)]

    def _which(self, row: dict) -> int:
        return int(row["source"][1:-1])

    def right(self, query: dict, source: dict) -> bool | None:
        if query["source"] != source["source"]:
            return normalise(query["text"]) == normalise(source["text"]) or False
        return self.graders[self._which(query)].right(query, source)

    def servable(self, rows: list[dict]) -> list[bool]:
        found = [False] * len(rows)
        for which, grader in enumerate(self.graders):
            mine = [i for i, r in enumerate(rows) if self._which(r) == which]
            for i, ok in zip(mine, workload.servable(grader, [rows[i] for i in mine])):
                found[i] = ok
        return found


def agree(a: str, b: str) -> bool:
    """The agreement judge on the test backend's answers: the same text, or one inside the other."""
    return a == b or (min(len(a), len(b)) >= 3 and (a in b or b in a))


@dataclass
class Settings:
    learn: bool = True
    target: float = 0.02
    confidence: float = 0.95
    min_observations: int = 50
    band: float = 0.08
    explore_most: float = 0.10
    explore_least: float = 0.02
    half_life: int = 100
    mode: str = "shadow"           # or "miss": how a would-be hit is checked (policy: exploration.mode)
    budget: float = 0.05           # shadow checks, as a share of the requests
    entry_margin: float = 0.02     # an entry's own evidence serves this far under its lowest agreement; < 0: off
    finer: bool = True
    judge_noise: float = 0.0       # the share of two answers the judge calls different whatever they say
    repeats: bool = True           # exact hits checked again beside them (what measures that noise)
    gate: str = "category"         # what stops vouching when its checks go bad: the category's checks, or the "cell"'s
    uniform: float | None = None   # one fixed threshold for all, no learning (the hindsight baseline)
    seed: int = 1


@dataclass
class Run:
    counts: dict = field(default_factory=lambda: defaultdict(int))
    history: list = field(default_factory=list)


def simulate(data: Prepared, policies: Path, s: Settings) -> dict:
    policy = load_policy(policies)
    guard = load_verifier("lexical-guard")
    verdicts: dict[tuple[int, int], bool] = {}
    priors = {n: c.threshold for n, c in policy.categories.items()}
    rule = learning.Rule(s.target, s.confidence, s.min_observations)
    evidence: dict[str, learning.Evidence] = defaultdict(learning.Evidence)
    live: dict[str, float] = {}
    rng = random.Random(s.seed)
    deaf = random.Random(s.seed + 1)  # the judge's noise, apart from the exploration coin
    cached = np.zeros(len(data.texts), dtype=bool)
    by_text: dict[str, int] = {}
    kinds = [answer_kind(t) for t in data.texts]
    run = Run()
    c = run.counts
    agreed: dict[int, float] = {}      # entry -> the lowest similarity of a query judged to want its answer
    disagreed: dict[int, float] = {}   # entry -> the highest of one judged to want another

    def cell(i: int) -> str:
        return f"{data.categories[i]}|{kinds[i]}" if s.finer else data.categories[i]

    def threshold(i: int) -> float:
        if s.uniform is not None:
            return s.uniform
        return live.get(cell(i), live.get(data.categories[i], priors.get(data.categories[i], 0.92)))

    def relearn(i: int) -> None:
        """As the proxy's sync: the category, then each of its cells with the category's as prior."""
        name = data.categories[i]
        live[name] = learning.decide(evidence[name], priors.get(name, 0.92), rule).threshold
        for key in [k for k in evidence if s.finer and k.startswith(name + "|")]:
            live[key] = learning.decide(evidence[key], live[name], rule).threshold

    def heard(same: bool) -> bool:
        """The judge's verdict: a sampling backend's wording makes it call some agreeing answers different."""
        return same and deaf.random() >= s.judge_noise

    def observe(i: int, j: int, sim: float, vouched: bool = False) -> None:
        same = heard(agree(data.answers[i], data.answers[j]))
        for entry in (j, i):  # the neighbour's entry, and the one the fresh answer is stored as
            if same:
                agreed[entry] = min(agreed.get(entry, 1.0), sim)
            else:
                disagreed[entry] = max(disagreed.get(entry, 0.0), sim)
        for key in {data.categories[i], cell(i)}:
            evidence[key].observe(sim, same, vouched)
            evidence[key].judged += 1
        c["observations"] += 1
        c["observed_false"] += not same
        if s.learn:
            relearn(i)

    def accepted(i: int, j: int, sim: float) -> bool:
        if (i, j) not in verdicts:
            verdicts[(i, j)] = guard.score(data.texts[i], data.texts[j], sim) >= 0.5
        return verdicts[(i, j)]

    def vouched(i: int, j: int, sim: float) -> bool:
        """As proxy/lookup.py's `vouched`."""
        checks = evidence[cell(i)] if s.gate == "cell" else evidence[data.categories[i]]
        if s.entry_margin < 0 or j not in agreed or not learning.vouching_holds(checks, rule):
            return False
        lowest = agreed[j] - s.entry_margin
        return sim >= lowest and disagreed.get(j, 0.0) < lowest

    for i, text in enumerate(data.texts):
        c["queries"] += 1
        c["servable"] += data.servable[i]
        key = normalise(text)
        if key in by_text:
            c["hits"] += 1
            c["exact"] += 1
            c["correct"] += 1
            for name in {data.categories[i], cell(i)}:
                evidence[name].serve(None)
            repeats = evidence[data.categories[i]].repeat_seen
            if s.learn and s.repeats and s.mode == "shadow" and c["shadow"] < s.budget * c["queries"] and \
                    rng.random() < learning.exploration_rate(repeats, s.explore_most, s.explore_least, s.half_life):
                c["shadow"] += 1  # asked again beside the exact hit: the backend answers a group alike
                same = heard(True)
                for name in {data.categories[i], cell(i)}:
                    evidence[name].observe(1.0, same, repeat=True)
            continue
        mine = threshold(i)
        sims = data.similarity[i, :i]
        candidates = np.flatnonzero(cached[:i] & (sims >= (learning.LOW if s.learn else mine)))
        order = candidates[np.argsort(-sims[candidates])]
        hit = near = None
        near_vouched = False
        for j in order[:3]:
            sim = float(sims[j])
            if not accepted(i, int(j), sim):
                continue
            if s.learn:
                for name in {data.categories[i], cell(i)}:
                    evidence[name].ask(sim)
            if sim >= max(mine, threshold(int(j))):
                hit = (int(j), sim)
            elif s.learn and sim >= mine - s.band and vouched(i, int(j), sim):
                hit = (int(j), sim)
                near_vouched = True
                c["vouched"] += 1
            elif sim >= mine - s.band:
                near = (int(j), sim)
            break
        if hit is not None:
            j, sim = hit
            rate = learning.exploration_rate(evidence[data.categories[i]].explored, s.explore_most, s.explore_least,
                                             s.half_life) if s.learn else 0.0
            checked = rng.random() < rate or (near_vouched and s.mode == "shadow")
            if checked and s.mode == "shadow":  # served, and the backend asked beside it within the budget
                if c["shadow"] < s.budget * c["queries"]:
                    c["shadow"] += 1
                    c["explored"] += 1
                    evidence[data.categories[i]].explored += not near_vouched
                    observe(i, j, sim, near_vouched)
                checked = False
            if checked:
                c["explored"] += 1
                evidence[data.categories[i]].explored += 1
                observe(i, j, sim, near_vouched)
            else:
                right = data.grader.right(data.rows[i], data.rows[j])
                c["hits"] += 1
                c["semantic"] += 1
                c["correct"] += right is True
                c["false"] += right is False
                c["ungraded"] += right is None
                c["answer_false"] += not agree(data.answers[i], data.answers[j])
                for name in {data.categories[i], cell(i)}:
                    evidence[name].serve(sim, near_vouched)
                continue
        elif near is not None and s.learn:
            observe(i, *near)
        cached[i] = True
        by_text[key] = i
        if i % 200 == 0:
            run.history.append({"query": i, "thresholds": dict(live)})
    graded = c["correct"] + c["false"]
    estimates = [learning.estimate(e, s.confidence) for name, e in evidence.items() if "|" not in name]
    hits = sum(e.hits for e in estimates) or 1
    final_estimate = learning.Estimate(*(sum(getattr(e, f) * e.hits for e in estimates) / hits
                                         for f in ("rate", "low", "high")), hits)
    return {
        "queries": c["queries"], "servable": c["servable"], "hits": c["hits"], "exact": c["exact"],
        "hit_rate": round(c["correct"] / c["servable"], 4) if c["servable"] else None,
        "false_hit_rate": round(c["false"] / graded, 4) if graded else None,
        "false": c["false"], "ungraded": c["ungraded"],
        # hits whose answer the backend would not have given: what the learner's estimate estimates
        "answer_false_rate": round(c["answer_false"] / c["hits"], 4) if c["hits"] else None, "explored": c["explored"],
        "explored_share": round(c["explored"] / c["queries"], 4), "shadow_checks": c["shadow"],
        "extra_calls_share": round(c["shadow"] / c["queries"], 4), "vouched": c["vouched"], "observations": c["observations"],
        "observed_false": c["observed_false"],
        "estimate_final": [round(final_estimate.rate, 4), round(final_estimate.low, 4), round(final_estimate.high, 4)],
        "thresholds": {k: v for k, v in sorted(live.items())},
        "history": run.history,
        "evidence": dict(evidence),
    }


def hindsight(data: Prepared, policies: Path, target: float) -> dict:
    """The best one threshold (with the verifier, no learning) at the target, found by bisection."""
    low, high = 0.80, 1.0
    best = simulate(data, policies, Settings(learn=False, uniform=1.0))
    for _ in range(12):
        middle = (low + high) / 2
        result = simulate(data, policies, Settings(learn=False, uniform=middle))
        if (result["false_hit_rate"] or 0) > target:
            low = middle
        else:
            high, best = middle, result
    return {"threshold": round(high, 4), **{k: best[k] for k in ("hit_rate", "false_hit_rate", "hits")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", action="append", required=True,
                        help="a workload, by name or folder; twice to interleave two into one stream")
    paths.add_workloads(parser)
    parser.add_argument("--half", type=int, default=0, choices=(0, 1))
    parser.add_argument("--policies", type=Path, default=ROOT / "policies.yaml")
    parser.add_argument("--target", type=float, default=0.02)
    parser.add_argument("--hindsight", action="store_true", help="also find the best single threshold")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a Settings field")
    parser.add_argument("--repeat-share", type=float, default=0.0, help="put in exact repeats (with_repeats)")
    parser.add_argument("--name", help="save to bench/results/NAME.json")
    args = parser.parse_args()
    args.workload = [paths.workload(args.workloads, name) for name in args.workload]
    data = prepare(args.workload, args.half, args.policies)
    if args.repeat_share:
        data = with_repeats(data, args.repeat_share)
    settings = Settings(target=args.target)
    for assignment in args.set:
        name, value = assignment.split("=", 1)
        setattr(settings, name, type(getattr(settings, name))(eval(value)))  # noqa: S307 - a bench's own flags
    result = simulate(data, args.policies, settings)
    result.pop("evidence")
    best = hindsight(data, args.policies, args.target) if args.hindsight else None
    print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=1))
    if best:
        print("best single threshold in hindsight (with the verifier):", json.dumps(best))
    if args.name:
        output.save(args.name, {"workloads": [str(w) for w in args.workload], "half": args.half,
                                "settings": vars(settings), "learned": result, "hindsight": best})


if __name__ == "__main__":
    main()
