"""IC-Cache and the adaptive policy under load: ComQA through catcache in front of a busy large model.

bench/ic.py asks whether IC answers are right; this asks what they do to latency and to the large
model's load when it is the bottleneck (issue 13, goals 3 and 5). The "large" backend is the test
backend answering each ComQA question with its gold answer as a sentence, 400 ms to the first token,
50 tokens/s, 4 generation slots and a queue behind them; the "small" one is the bundled
SmolLM2-135M-Instruct on the CPU. The first --limit queries of comqa-dev's measurement half
(bench.heldout.group_half 1) are sent with the OpenAI SDK at concurrency 32 (system prompt
"Answer the question in one short sentence.", max_tokens 32, temperature 0, as bench/ic.py asks)
through a fresh `catcache serve` per arm, one arm after the other:

- off: no IC band, adaptive off (the baseline);
- ic: the shipped IC band and router;
- ic-capped: the same with `small_full_at` (--small-full-at): a near miss goes to the large
  backend while the small one is busy, instead of queueing behind it;
- adaptive: no IC band, the policy's `adaptive` block enabled;
- ic-capped+adaptive: both.

With --rate the queries arrive open loop instead, at seeded Poisson times (the same in every arm),
as users do: a closed loop of 32 clients keeps the large backend's queue full whatever is
offloaded (a client served early just asks again), so there offloading buys throughput, not
latency; at a fixed arrival rate it shortens the queue.

Every answer is graded by whether it contains the query's gold answer (bench.ic.correct); hits are
graded by the workload's labels as bench/replay.py does. A near miss is a request the proxy found
a neighbour for in its category's IC band: an IC answer, or a miss with similarity >= ic.low.
Requests ask for log-probabilities, so each IC answer's confidence is kept with it.

    python -m bench.ic_load --limit 1000                 # closed loop, concurrency 32
    python -m bench.ic_load --limit 1000 --rate 8.2      # open loop
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import yaml
from openai import AsyncOpenAI

from bench import output, replay, stack
from bench.heldout import HELDOUT, labeled_pairs, split_stream
from bench.ic import SYSTEM, correct, gold_sentence
from bench.paths import add_workloads, scratch, workload
from catcache.backends.local import MODEL_NAME, LocalModel
from catcache.verify.labels import Grader

ARMS = {"off": (False, False, False), "ic": (True, False, False), "ic-capped": (True, True, False),
        "adaptive": (False, False, True), "ic-capped+adaptive": (True, True, True)}  # (IC, capped, adaptive)
SAMPLING = {"max_tokens": 32, "temperature": 0, "logprobs": True}
CHAT = "/v1/chat/completions"


def arm_policy(base: dict, large_url: str, small_url: str, ic: bool, small_full_at: int | None,
               adaptive: bool) -> dict:
    """The shipped policy pointed at this bench's backends, with the IC bands (capped at
    `small_full_at`) and `adaptive` on or off."""
    policy = json.loads(json.dumps(base))  # a deep copy
    policy["backends"]["large"]["url"] = large_url
    policy["backends"]["small"].update(url=small_url, model=MODEL_NAME)
    policy["adaptive"] = dict(policy.get("adaptive") or {}, enabled=adaptive)
    for category in policy["categories"].values():
        if not ic:
            category.pop("ic", None)
        elif category.get("ic") and small_full_at is not None:
            category["ic"]["small_full_at"] = small_full_at
    return policy


def near_miss(answer: replay.Answer, categories: dict) -> bool:
    """Whether the proxy found a neighbour in the request's IC band (it then tried, or may have tried, IC)."""
    if answer.outcome == "ic":
        return True
    band = (categories.get(answer.category or "") or {}).get("ic")
    return answer.outcome == "miss" and band is not None and answer.similarity is not None \
        and answer.similarity >= band["low"]


def _why_large(answer: replay.Answer) -> str:
    """Why a near miss went to the large backend, as far as the verdict header tells (it keeps the first reason)."""
    verdict = answer.verdict or ""
    return verdict.split(" (")[0] if verdict.startswith("ic:") else "verifier refused, or no usable example"


def summarize(queries: list[dict], answers: list[replay.Answer], policy: dict, grader: Grader,
              large_calls: int, seconds: float) -> dict:
    """One arm's figures: where requests went, how fast, how often right."""
    n = len(answers)
    categories = policy["categories"]
    outcomes = Counter(a.outcome for a in answers)
    near = [a for a in answers if near_miss(a, categories)]
    ic = [(q, a) for q, a in zip(queries, answers) if a.outcome == "ic"]
    ic_right = sum(correct(a.reply, q["answer"]) for q, a in ic)
    refused = Counter(_why_large(a) for a in near if a.outcome == "miss")
    answered = [(q, a) for q, a in zip(queries, answers) if not a.outcome.startswith("error")]
    hits = replay.grade(queries, answers, replay.thresholds_of(categories), grader)["overall"]
    latency = [a.latency_ms for a in answers]
    by_outcome = {name: output.percentiles([a.latency_ms for a in answers if a.outcome == name], (50, 99))
                  for name in sorted(outcomes)}
    return {
        "requests": n, "seconds": round(seconds, 1), "requests_per_s": round(n / seconds, 2) if seconds else None,
        "outcomes": dict(outcomes),
        "near_misses": len(near), "ic_answers": len(ic), "near_misses_to_large": dict(refused),
        "ic_share_of_near_misses": round(len(ic) / len(near), 4) if near else None,
        "ic_correct": round(ic_right / len(ic), 4) if ic else None,
        "large_calls": large_calls, "large_share": round(large_calls / n, 4) if n else None,
        "latency_ms": output.percentiles(latency, (50, 90, 99)), "latency_by_outcome_ms": by_outcome,
        "answers_correct": round(sum(correct(a.reply, q["answer"]) for q, a in answered) / len(answered), 4)
        if answered else None,
        "hits": hits["hits"], "hit_rate": hits["hit_rate"], "false_hits": hits["false"],
        "false_hit_rate": hits["false_hit_rate"],
        "near_miss_items": [{"query": q["text"], "outcome": a.outcome, "similarity": a.similarity,
                             "logprob": a.logprob, "reply": a.reply, "right": correct(a.reply, q["answer"])}
                            for q, a in zip(queries, answers) if near_miss(a, categories)],
    }


async def send_at_rate(base_url: str, texts: list[str], rate: float, seed: int) -> list[replay.Answer]:
    """Open loop: query i leaves at its seeded Poisson arrival time, answered or not the ones before."""
    starts = np.cumsum(np.random.default_rng(seed).exponential(1 / rate, len(texts)))
    async with AsyncOpenAI(base_url=base_url, api_key="catcache-bench", max_retries=0, timeout=300) as client:
        began = time.perf_counter()

        async def one(i: int) -> replay.Answer:
            await asyncio.sleep(max(0.0, began + starts[i] - time.perf_counter()))
            return await replay.ask(client, texts[i], replay.MODEL, SYSTEM, **SAMPLING)

        return list(await asyncio.gather(*(one(i) for i in range(len(texts)))))


def large_calls(url: str) -> int:
    """Generations the large backend was asked for so far (its own count, single-flight followers excluded)."""
    return int(httpx.get(url.removesuffix("/v1") + "/stats", timeout=10).json().get(CHAT, 0))


def probe_small(url: str, queries: list[dict], n: int = 3) -> dict:
    """The small model alone on an idle backend: seconds and tokens per second for an IC-sized answer."""
    times, tokens = [], []
    with httpx.Client(timeout=600) as http:
        for row in queries[:n]:
            body = {"model": MODEL_NAME, "messages": [{"role": "system", "content": SYSTEM},
                                                      {"role": "user", "content": row["text"]}], **SAMPLING}
            started = time.perf_counter()
            usage = http.post(f"{url}/chat/completions", json=body).json()["usage"]
            times.append(time.perf_counter() - started)
            tokens.append(usage["completion_tokens"])
    return {"answers": n, "seconds_p50": round(float(np.median(times)), 3),
            "tokens_per_s": round(sum(tokens) / sum(times), 1)}


def run_arm(name: str, policy: dict, queries: list[dict], grader: Grader, large_url: str,
            concurrency: int, rate: float | None, seed: int) -> dict:
    load_before = os.getloadavg()
    with stack.served(policy) as proxy:
        before = large_calls(large_url)
        started = time.perf_counter()
        texts = [q["text"] for q in queries]
        answers = asyncio.run(send_at_rate(proxy.base_url, texts, rate, seed) if rate else
                              replay.send_all(proxy.base_url, texts, concurrency, system=SYSTEM, **SAMPLING))
        seconds = time.perf_counter() - started
        calls = large_calls(large_url) - before
    result = summarize(queries, answers, policy, grader, calls, seconds)
    result["load_average"] = {"before": [round(x, 2) for x in load_before],
                              "after": [round(x, 2) for x in os.getloadavg()]}
    print(f"{name}: {json.dumps({k: result[k] for k in ('outcomes', 'latency_ms', 'large_share')})}", flush=True)
    return result


def show(title: str, results: dict[str, dict]) -> None:
    rows = []
    for name, r in results.items():
        lat = r["latency_ms"]
        rows.append([name, r["requests"], r["requests_per_s"], f"{r['large_share']:.1%}", r["near_misses"],
                     r["ic_answers"], output.fmt(r["ic_share_of_near_misses"]), output.fmt(r["ic_correct"]),
                     output.fmt(lat["p50"], 0), output.fmt(lat["p99"], 0), r["hits"],
                     output.fmt(r["false_hit_rate"], 3), output.fmt(r["answers_correct"], 3)])
    output.show(title,
                ["arm", "requests", "req/s", "to large", "near misses", "IC answers", "IC share", "IC right",
                 "p50 ms", "p99 ms", "hits", "false-hit", "answers right"], rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default="comqa-dev", help="a workload's name or folder")
    add_workloads(parser)
    parser.add_argument("--limit", type=int, default=600, help="the first N queries of the half")
    parser.add_argument("--half", type=int, choices=(0, 1), default=HELDOUT,
                        help="1 measures; 0, the calibration half, is where router cuts are chosen")
    parser.add_argument("--arms", default="off,ic,ic-capped,adaptive", help=f"comma-separated, of {', '.join(ARMS)}")
    parser.add_argument("--concurrency", type=int, default=32, help="clients of the closed loop")
    parser.add_argument("--rate", type=float, help="open loop instead: Poisson arrivals at this many per second")
    parser.add_argument("--seed", type=int, default=13, help="of the open loop's arrival times")
    parser.add_argument("--think-ms", type=float, default=400, help="the large backend's time to first token")
    parser.add_argument("--tokens-per-s", type=float, default=50, help="the large backend's token rate")
    parser.add_argument("--slots", type=int, default=4, help="the large backend's concurrent generations")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the small model")
    parser.add_argument("--small-full-at", type=int, default=1,
                        help="small_full_at of the capped arms: the bundled model runs one generation at a time")
    parser.add_argument("--policies", type=Path, default=stack.DEFAULT_POLICIES)
    parser.add_argument("--data-dir", type=Path, default=scratch("catcache-bench-ic"),
                        help="where the small model's GGUF is kept between runs")
    parser.add_argument("--name", default="ic_load", help="results file: bench/results/NAME.json")
    args = parser.parse_args(argv)
    args.workload = workload(args.workloads, args.workload)
    arms = args.arms.split(",")
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        parser.error(f"unknown arms {unknown}; choose from {list(ARMS)}")

    queries = split_stream(args.workload, args.half)[: args.limit]
    grader = Grader.for_rows(queries, labeled_pairs(args.workload, args.half))
    base = yaml.safe_load(args.policies.read_text())
    results: dict[str, dict] = {}
    small = LocalModel(args.data_dir, threads=args.threads)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as out:
        json.dump({row["text"]: gold_sentence(row["answer"]) for row in queries}, out)
    try:
        small_url = small.start()
        probe = probe_small(small_url, queries)
        with stack.test_server("catcache.testing.backend", "--think-ms", str(args.think_ms), "--tokens-per-s",
                               str(args.tokens_per_s), "--slots", str(args.slots), "--replies", out.name) as large:
            for name in arms:
                ic, capped, adaptive = ARMS[name]
                policy = arm_policy(base, large, small_url, ic, args.small_full_at if capped else None, adaptive)
                results[name] = run_arm(name, policy, queries, grader, large, args.concurrency, args.rate,
                                        args.seed)
    finally:
        small.stop()
        Path(out.name).unlink(missing_ok=True)
    load = f"open loop at {args.rate}/s" if args.rate else f"concurrency {args.concurrency}"
    half = "measurement" if args.half == HELDOUT else "calibration"
    show(f"IC and adaptive under load: first {len(queries)} of ComQA's {half} half, {load}", results)
    words = float(np.mean([len(gold_sentence(q["answer"]).split()) for q in queries]))
    capacity = args.slots / (args.think_ms / 1000 + words / args.tokens_per_s)
    output.save(args.name, {
        "workload": str(args.workload), "half": args.half, "queries": len(queries),
        "load": {"open_loop_rate_per_s": args.rate, "seed": args.seed} if args.rate
        else {"concurrency": args.concurrency},
        "large": {"think_ms": args.think_ms, "tokens_per_s": args.tokens_per_s, "slots": args.slots,
                  "answer_words_mean": round(words, 1), "capacity_per_s": round(capacity, 2)},
        "small": {"model": MODEL_NAME, "threads": args.threads, "idle": probe, "small_full_at": args.small_full_at},
        "sampling": SAMPLING, "system": SYSTEM, "arms": results,
    })


if __name__ == "__main__":
    main()
