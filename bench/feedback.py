"""What feedback does to false hits: a labeled stream replayed through fresh proxies twice per
policy, once as is and once by an app that reports every hit it is served, right or wrong.

    python -m bench.feedback --stream ../shared/workloads/comqa-dev/stream.jsonl --limit 2000

The app judges a hit by the workload's labels, with the replay's rule (verify/labels.py; a hit
the labels cannot grade is not reported), and reports it through POST /v1/cache/feedback as soon as it is served,
so a wrong entry is evicted before the next query. That is the best case: a real app reports
some of its wrong hits, later. Queries go one at a time, so each report lands before the next
query. Each policy runs as shipped and with one threshold for every category (no verifier, no IC
band; `--uniform`), where there are false hits to report. Also times the report round trip next
to the hits it follows.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import openai
from openai import AsyncOpenAI
from tqdm import tqdm

from bench import output, replay, stack, workload
from bench.replay import HITS, Answer
from catcache.verify.labels import Grader


async def run(base_url: str, queries: list[dict], report: bool, grader: Grader) -> tuple[list[Answer], dict]:
    """Every query in order; with `report`, every hit judged and reported at once."""
    stored: dict[str, dict] = {}  # entry key -> the query whose answer it holds
    answers: list[Answer] = []
    sent = {"reports": 0, "wrong": 0, "gone": 0, "report_ms": []}
    async with AsyncOpenAI(base_url=base_url, api_key="catcache-bench", max_retries=0, timeout=300) as client:
        for query in tqdm(queries, unit="q", leave=False):
            answer = await replay.ask(client, query["text"])
            answers.append(answer)
            if answer.outcome == "miss" and answer.key:
                stored[answer.key] = query  # a key evicted and stored again holds the new answer
            elif report and answer.outcome in HITS and answer.key in stored:
                correct = grader.right(query, stored[answer.key])
                if correct is None:
                    continue
                started = time.perf_counter()
                try:
                    await client.post("/cache/feedback", cast_to=object, body={"key": answer.key, "correct": correct})
                except openai.NotFoundError:
                    sent["gone"] += 1  # expired between the hit and the report
                sent["report_ms"].append((time.perf_counter() - started) * 1000)
                sent["reports"] += 1
                sent["wrong"] += not correct
    return answers, {**sent, "report_ms": output.percentiles(sent["report_ms"])}


def compare(backend_url: str, queries: list[dict], policies: Path, grader: Grader) -> dict:
    """Both apps, each on a fresh proxy (an empty cache) with `policies`."""
    results = {}
    for mode in ("no feedback", "oracle feedback"):
        with stack.proxy(backend_url, policies) as proxy:
            answers, sent = asyncio.run(run(proxy.base_url, queries, mode != "no feedback", grader))
        overall = replay.grade(queries, answers, replay.thresholds(policies), grader)["overall"]
        results[mode] = {**{k: overall[k] for k in ("hits", "correct", "false", "hit_rate", "false_hit_rate",
                                                    "hit_ms")}, "feedback": sent}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    workload.add_arguments(parser)
    parser.add_argument("--policies", type=Path, default=stack.DEFAULT_POLICIES)
    parser.add_argument("--uniform", type=float, default=0.90,
                        help="the one threshold of the comparison policy (a common semantic-cache default)")
    parser.add_argument("--name", default="feedback", help="results file: bench/results/NAME.json")
    args = parser.parse_args()
    name, queries, grader = workload.load(args)
    results = {}
    with stack.backend(0, 0) as backend_url, stack.uniform_policies(args.policies, args.uniform) as uniform:
        for label, policies in ((f"{args.policies.name}", args.policies), (f"uniform {args.uniform}", uniform)):
            results[label] = compare(backend_url, queries, policies, grader)
    rows = []
    for label, modes in results.items():
        for mode, r in modes.items():
            sent = r["feedback"]
            rows.append([label, mode, r["hits"], r["correct"], r["false"], output.fmt(r["hit_rate"], 3),
                         output.fmt(r["false_hit_rate"], 3), sent["reports"], sent["wrong"],
                         output.fmt(r["hit_ms"]["p50"], 1), output.fmt(sent["report_ms"]["p50"], 1)])
    output.show(f"feedback on {name}: {len(queries)} queries, one at a time",
                ["policy", "app", "hits", "correct", "false", "hit rate", "false-hit rate", "reports",
                 "reported wrong", "hit p50 ms", "report p50 ms"], rows)
    output.save(args.name, {"workload": name, "queries": len(queries), "results": results})


if __name__ == "__main__":
    main()
