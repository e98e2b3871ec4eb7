"""How often does the agreement judge get a pair wrong? Measured on ComQA's calibration half.

    python -m bench.judge_error [--workload comqa-dev]

Each query of the half-0 stream is paired with its most similar earlier query (at cosine 0.80 or
more: the pairs the learner observes), and the judge compares the two clusters' answer texts
(ComQA's answer sets, as a backend that knows the answers would say them). Its verdict is graded
by the workload's rule (verify/labels.py). A judge that says "same" for a false pair lets a false
hit pass unseen (the dangerous error); one that says "different" for a right pair only makes the
learner more careful. Written to bench/results/judge_error.json.
"""

from __future__ import annotations

import argparse
import asyncio

import numpy as np

from bench import output, paths
from bench.heldout import TRAIN, split_stream
from catcache.index.embedder import Embedder
from catcache.verify.judge import AgreementJudge
from catcache.verify.labels import Grader



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="comqa-dev", help="by name or folder")
    paths.add_workloads(parser)
    parser.add_argument("--min-similarity", type=float, action="append", default=[])
    args = parser.parse_args()
    args.workload = paths.workload(args.workloads, args.workload)
    stream = split_stream(args.workload, TRAIN)
    grader = Grader.for_rows(stream)
    embedder = Embedder()
    vectors = embedder.encode([row["text"] for row in stream])
    pairs = []
    for i in range(1, len(stream)):
        similarities = vectors[:i] @ vectors[i]
        j = int(np.argmax(similarities))
        if similarities[j] >= 0.80 and stream[i]["answer"] and stream[j]["answer"]:
            pairs.append((stream[i], stream[j], grader.right(stream[i], stream[j])))
    answers = sorted({row["answer"] for pair in pairs for row in pair[:2]})
    encoded = dict(zip(answers, embedder.encode(answers)))

    async def embed(texts: list[str]) -> np.ndarray:
        return np.stack([encoded[t] if t in encoded else embedder.encode([t])[0] for t in texts])

    results = []
    for threshold in args.min_similarity or [0.85, 0.9, 0.95, 0.98, 1.01]:
        judge = AgreementJudge(embed, threshold)
        verdicts = asyncio.run(_judge_all(judge, pairs))
        right = [p[2] for p in pairs]
        false_same = sum(v and r is False for v, r in zip(verdicts, right))
        false_different = sum(not v and r is True for v, r in zip(verdicts, right))
        results.append({"min_similarity": threshold, "pairs": len(pairs),
                        "false_pairs": sum(r is False for r in right), "right_pairs": sum(r is True for r in right),
                        "said_same_of_false": false_same, "said_different_of_right": false_different,
                        "error": round((false_same + false_different) / len(pairs), 4)})
    output.show("agreement judge on ComQA half 0 neighbour pairs", list(results[0]),
                [list(r.values()) for r in results])
    output.save("judge_error", {"workload": str(args.workload), "half": TRAIN, "results": results})


async def _judge_all(judge: AgreementJudge, pairs: list[tuple[dict, dict, bool | None]]) -> list[bool]:
    return [(await judge.judge(a["answer"], b["answer"])).same for a, b, _ in pairs]


if __name__ == "__main__":
    main()
