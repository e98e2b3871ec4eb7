"""How often does a learning judge get a pair wrong? Measured on ComQA's calibration half.

    python -m bench.judge_error [--workload comqa-dev]
    python -m bench.judge_error --judge llm                     # SmolLM2-135M as the LLM judge
    python -m bench.judge_error --answers model --pairs 300     # SmolLM2-135M's own answers judged

Each query of the half-0 stream is paired with its most similar earlier query (at cosine 0.80 or
more: the pairs the learner observes), and the judge compares two answers, one per query. With
`--answers workload` (default) they are the two clusters' answer texts (ComQA's answer sets, as a
backend that knows the answers would say them); with `--answers model` the bundled model
(SmolLM2-135M-Instruct, bench/bundled_replies.py) answers each question of a seeded sample of the
pairs (all false pairs up to half of `--pairs`, the rest right ones), at temperature 0, as a
backend in front of the cache would. `--judge agreement` sweeps `AgreementJudge`'s
min_similarity; `--judge llm` is `LlmJudge` with the bundled model as the judge's backend, asked
exactly as the proxy asks it. Each verdict is graded by the workload's rule (verify/labels.py). A
judge that says "same" for a false pair lets a false hit pass unseen (the dangerous error); one
that says "different" for a right pair only makes the learner more careful. Written to
bench/results/judge_error[-llm][-model-answers].json; the model's replies are cached in `--cache`.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections import Counter
from pathlib import Path

import numpy as np

from bench import output, paths
from bench.bundled_replies import BundledReplies
from bench.heldout import TRAIN, split_stream
from catcache.index.embedder import Embedder
from catcache.verify.judge import AgreementJudge, Judge, LlmJudge
from catcache.verify.labels import Grader

Pair = tuple[dict, dict, bool]  # (the later query, its earlier neighbour, whether one's answer is right for the other)
SWEEP = [0.85, 0.9, 0.95, 0.98, 1.01]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="comqa-dev", help="by name or folder")
    paths.add_workloads(parser)
    parser.add_argument("--judge", choices=["agreement", "llm"], default="agreement")
    parser.add_argument("--answers", choices=["workload", "model"], default="workload",
                        help="the workload's answer texts, or the bundled model's answers to the questions")
    parser.add_argument("--min-similarity", type=float, action="append", default=[],
                        help="the agreement judge's thresholds to sweep")
    parser.add_argument("--pairs", type=int, default=300, help="with --answers model: pairs sampled")
    parser.add_argument("--seed", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=48, help="with --answers model: each answer's length cap")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the bundled model")
    parser.add_argument("--data-dir", type=Path, default=paths.scratch("catcache-bench-ic"),
                        help="where the bundled model is found (or downloaded once), as for bench.ic")
    parser.add_argument("--cache", type=Path, default=output.RESULTS / "tmp" / "judge_error-replies.jsonl",
                        help="the bundled model's replies, kept between runs")
    args = parser.parse_args()
    args.workload = paths.workload(args.workloads, args.workload)
    stream = split_stream(args.workload, TRAIN)
    grader = Grader.for_rows(stream)
    embedder = Embedder()
    pairs = neighbour_pairs(stream, embedder.encode([row["text"] for row in stream]), grader)
    if args.answers == "model":
        pairs = sample(pairs, args.pairs, args.seed)
    started = time.perf_counter()
    results, replies = asyncio.run(_measure(args, pairs, embedder))
    name = "judge_error" + ("-llm" if args.judge == "llm" else "") + ("-model-answers" if args.answers == "model" else "")
    output.show(f"{args.judge} judge on ComQA half 0 neighbour pairs, {args.answers} answers",
                list(results[0])[:8], [list(r.values())[:8] for r in results])
    setup = {"judge": args.judge, "answers": args.answers}
    if args.answers == "model":
        setup |= {"pairs_sampled": args.pairs, "seed": args.seed, "max_tokens": args.max_tokens, "temperature": 0}
    if args.judge == "llm" or args.answers == "model":
        setup |= {"model": "SmolLM2-135M-Instruct (bundled, backends/local.py)", "threads": args.threads,
                  "replies_generated": replies, "wall_s": round(time.perf_counter() - started, 1)}
    output.save(name, {"workload": str(args.workload), "half": TRAIN, **setup, "results": results})


def neighbour_pairs(stream: list[dict], vectors: np.ndarray, grader: Grader) -> list[Pair]:
    """Each query with its most similar earlier one at cosine 0.80 or more, both with an answer."""
    pairs = []
    for i in range(1, len(stream)):
        similarities = vectors[:i] @ vectors[i]
        j = int(np.argmax(similarities))
        if similarities[j] >= 0.80 and stream[i]["answer"] and stream[j]["answer"]:
            pairs.append((stream[i], stream[j], grader.right(stream[i], stream[j])))
    return pairs


def sample(pairs: list[Pair], size: int, seed: int) -> list[Pair]:
    """A seeded sample of `size` pairs, false ones up to half of it, in stream order: false pairs are
    rare (about one in ten), and the error that matters is on them."""
    false = [p for p in pairs if not p[2]]
    right = [p for p in pairs if p[2]]
    chance = random.Random(seed)
    taken = chance.sample(false, min(len(false), size // 2))
    taken += chance.sample(right, min(len(right), size - len(taken)))
    order = {id(p): k for k, p in enumerate(pairs)}
    return sorted(taken, key=lambda p: order[id(p)])


async def _measure(args: argparse.Namespace, pairs: list[Pair], embedder: Embedder) -> tuple[list[dict], int]:
    replies = BundledReplies(args.data_dir, args.cache, args.threads)
    try:
        if args.answers == "model":
            texts = [(await replies.answer(a["text"], args.max_tokens), await replies.answer(b["text"], args.max_tokens))
                     for a, b, _ in pairs]
        else:
            texts = [(a["answer"], b["answer"]) for a, b, _ in pairs]
        if args.judge == "llm":
            results = [await _grade(LlmJudge(replies.judge), pairs, texts, {"judge": "llm"})]
        else:
            answers = sorted({t for pair in texts for t in pair})
            encoded = dict(zip(answers, embedder.encode(answers)))

            async def embed(batch: list[str]) -> np.ndarray:
                return np.stack([encoded[t] if t in encoded else embedder.encode([t])[0] for t in batch])

            results = [await _grade(AgreementJudge(embed, threshold), pairs, texts, {"min_similarity": threshold})
                       for threshold in args.min_similarity or SWEEP]
            similarity = [float(encoded[a] @ encoded[b]) for a, b in texts]
            for result in results:  # where the embedding step's threshold falls among the pairs it decides
                result["answer_similarity"] = {
                    kind: output.percentiles([s for s, p in zip(similarity, pairs) if p[2] is want], (10, 25, 50, 75, 90))
                    for kind, want in (("right_pairs", True), ("false_pairs", False))}
    finally:
        await replies.aclose()
    return results, replies.asked


async def _grade(judge: Judge, pairs: list[Pair], texts: list[tuple[str, str]], row: dict) -> dict:
    """The judge's verdict on each pair's two answers (the later query's as fresh), against the label."""
    verdicts = [await judge.judge(fresh, cached) for fresh, cached in texts]
    right = [p[2] for p in pairs]
    false_same = sum(v.same and r is False for v, r in zip(verdicts, right))
    false_different = sum(not v.same and r is True for v, r in zip(verdicts, right))
    examples = [{"fresh_question": p[0]["text"], "cached_question": p[1]["text"], "right": r,
                 "fresh": t[0], "cached": t[1], "how": v.how}
                for p, t, v, r in zip(pairs, texts, verdicts, right) if v.same != r][:6]
    found = {**row, "pairs": len(pairs), "false_pairs": sum(r is False for r in right),
            "right_pairs": sum(r is True for r in right), "said_same_of_false": false_same,
            "said_different_of_right": false_different, "error": round((false_same + false_different) / len(pairs), 4),
            "said_same": sum(v.same for v in verdicts),
            "decided_by": dict(Counter(v.how.split(" ")[0].rstrip(":") for v in verdicts)),
            "wrong_examples": examples}
    if judge.name == "llm":
        found["replies"] = dict(Counter(v.how for v in verdicts).most_common(8))
    return found


if __name__ == "__main__":
    main()
