"""Replay a labeled workload through catcache with the OpenAI SDK and grade every hit.

    python -m bench.replay --stream ../shared/workloads/qqp-dev/stream.jsonl --concurrency 8
    python -m bench.replay --heldout --think-ms 0 --tokens-per-s 0 --concurrency 8

Each query is sent as a one-turn chat. The proxy names the cache entry it served or stored in
`x-catcache-key`; a miss stores its query under that key, so a hit is graded by comparing the
query that was stored with the query that was served, by the workload's labels
(verify/labels.py): the same group, or for ComQA agreeing answers, is a correct hit; QQP hits
are graded only where the two questions form a labeled pair, and the rest count as ungraded.
The workload's own `category` labels are used only to break the figures down, never sent to catcache.

- hit rate: correct hits / servable queries (an earlier query could have answered them: same
  group or agreeing answer; for QQP, the labeled duplicate came earlier);
- false-hit rate: false hits / graded hits;
- near miss: a miss or IC answer whose best neighbour came within 0.05 of its category's
  threshold, or that the verifier refused;
- tokens saved: the usage of every hit's answer; time saved: per hit, the mean miss latency
  less the hit's latency.

With concurrency above 1, a query can arrive while an earlier equivalent's answer is still being
generated, and miss where a sequential client would hit; the JSON records the concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import yaml
from openai import AsyncOpenAI
from tqdm import tqdm

from bench import output, stack, workload
from catcache.verify.labels import Grader

MODEL = "test-model"
HITS = ("hit-exact", "hit-semantic")
NEAR = 0.05


@dataclass(frozen=True)
class Answer:
    """What the proxy said about one query."""

    outcome: str               # x-catcache, or "error"
    key: str | None            # x-catcache-key: the entry served (hit) or stored (miss)
    category: str | None       # catcache's category, not the workload's
    similarity: float | None
    verdict: str | None
    latency_ms: float
    tokens: int
    reply: str = ""            # the answer's text, for benches that grade answers rather than hits
    logprob: float | None = None  # its mean token log-probability, when asked for and sent


async def ask(client: AsyncOpenAI, text: str, model: str = MODEL, system: str | None = None,
              **sampling: object) -> Answer:
    """One query as a one-turn chat (after `system`, if given), with `sampling` settings such as max_tokens."""
    started = time.perf_counter()
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    try:
        raw = await client.chat.completions.with_raw_response.create(model=model, messages=messages, **sampling)
        completion = raw.parse()
    except Exception as exc:  # noqa: BLE001 - a failed query is counted, not fatal to the run
        return Answer(f"error: {type(exc).__name__}", None, None, None, None,
                      (time.perf_counter() - started) * 1000, 0)
    latency = (time.perf_counter() - started) * 1000
    headers = raw.headers
    similarity = headers.get("x-catcache-similarity")
    return Answer(headers.get("x-catcache", "none"), headers.get("x-catcache-key"),
                  headers.get("x-catcache-category"), float(similarity) if similarity else None,
                  headers.get("x-catcache-verdict"), latency,
                  completion.usage.total_tokens if completion.usage else 0,
                  (completion.choices[0].message.content or "") if completion.choices else "",
                  _mean_logprob(completion))


def _mean_logprob(completion: object) -> float | None:
    choices = getattr(completion, "choices", None) or []
    tokens = (choices[0].logprobs.content or []) if choices and choices[0].logprobs else []
    return sum(t.logprob for t in tokens) / len(tokens) if tokens else None


async def send_all(base_url: str, texts: list[str], concurrency: int, progress: bool = True,
                   model: str = MODEL, system: str | None = None, **sampling: object) -> list[Answer]:
    """Send `texts` in order, at most `concurrency` at a time; answers in the same order."""
    answers: list[Answer | None] = [None] * len(texts)
    queue = iter(range(len(texts)))
    bar = tqdm(total=len(texts), disable=not progress, unit="q", smoothing=0.05)

    async def worker(client: AsyncOpenAI) -> None:
        for i in queue:
            answers[i] = await ask(client, texts[i], model, system, **sampling)
            bar.update()

    async with AsyncOpenAI(base_url=base_url, api_key="catcache-bench", max_retries=0, timeout=300) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    bar.close()
    return [a for a in answers if a is not None]


def thresholds(policies: Path) -> dict[str, float]:
    """Each category's threshold, to tell a near miss from a plain miss."""
    return thresholds_of(yaml.safe_load(policies.read_text()).get("categories") or {})


def thresholds_of(categories: dict) -> dict[str, float]:
    return {name: float(c.get("threshold", 0.92)) for name, c in categories.items()}


def grade(queries: list[dict], answers: list[Answer], limits: dict[str, float],
          grader: Grader | None = None) -> dict[str, dict]:
    """Per workload category and overall: rates, near misses, latencies, savings."""
    stored: dict[str, int] = {}
    for i, answer in enumerate(answers):
        if answer.outcome == "miss" and answer.key:
            stored.setdefault(answer.key, i)
    miss_ms = [a.latency_ms for a in answers if a.outcome == "miss"]
    mean_miss = sum(miss_ms) / len(miss_ms) if miss_ms else 0.0

    grader = grader or Grader.for_rows(queries)
    counted = ("queries", "repeatable", "hits", "correct", "false", "ungraded", "unattributed", "hit-exact",
               "hit-semantic",
               "miss", "ic", "bypass", "near_misses", "tokens_saved", "time_saved_s")
    rows: dict[str, dict] = defaultdict(lambda: defaultdict(float, dict.fromkeys(counted, 0.0)))
    latencies: dict[str, dict[str, list[float]]] = defaultdict(lambda: {"hit": [], "miss": []})
    for i, (query, answer, repeatable) in enumerate(zip(queries, answers, workload.servable(grader, queries))):
        for name in (query.get("category", "-"), "overall"):
            row = rows[name]
            row["queries"] += 1
            row["repeatable"] += repeatable
            row[answer.outcome] += 1
            if answer.outcome in HITS:
                source = stored.get(answer.key or "")
                row["hits"] += 1
                right = None if source is None else grader.right(query, queries[source])
                row["unattributed"] += source is None
                row["ungraded"] += source is not None and right is None
                row["correct"] += right is True
                row["false"] += right is False
                row["tokens_saved"] += answer.tokens
                row["time_saved_s"] += max(0.0, mean_miss - answer.latency_ms) / 1000
                latencies[name]["hit"].append(answer.latency_ms)
            elif answer.outcome in ("miss", "ic"):
                latencies[name]["miss"].append(answer.latency_ms)
                limit = limits.get(answer.category or "", 1.0)
                near = answer.verdict or (answer.similarity is not None and answer.similarity >= limit - NEAR)
                row["near_misses"] += bool(near)
    graded = {}
    for name, row in rows.items():
        graded_hits = row["correct"] + row["false"]
        graded[name] = {
            **{k: round(v, 1) if k == "time_saved_s" else int(v) for k, v in row.items()},
            "hit_rate": round(row["correct"] / row["repeatable"], 4) if row["repeatable"] else None,
            "false_hit_rate": round(row["false"] / graded_hits, 4) if graded_hits else None,
            "hit_ms": output.percentiles(latencies[name]["hit"]),
            "miss_ms": output.percentiles(latencies[name]["miss"]),
        }
    return dict(sorted(graded.items(), key=lambda kv: (kv[0] == "overall", -kv[1]["queries"])))


async def replay(base_url: str, queries: list[dict], concurrency: int, policies: Path,
                 progress: bool = True, model: str = MODEL, grader: Grader | None = None) -> dict:
    started = time.perf_counter()
    answers = await send_all(base_url, [q["text"] for q in queries], concurrency, progress, model)
    elapsed = time.perf_counter() - started
    return {"seconds": round(elapsed, 1), "queries_per_s": round(len(queries) / elapsed, 1),
            "rates": grade(queries, answers, thresholds(policies), grader)}


def show(title: str, rates: dict[str, dict]) -> None:
    columns = ["category", "queries", "servable", "hits", "ungraded", "hit rate", "false-hit", "near miss",
               "hit p50/p95/p99 ms", "miss p50/p95/p99 ms", "tokens saved", "time saved s"]
    rows = []
    for name, r in rates.items():
        hit, miss = r["hit_ms"], r["miss_ms"]
        rows.append([name, r["queries"], r["repeatable"], r["hits"], r.get("ungraded", 0), output.fmt(r["hit_rate"], 3),
                     output.fmt(r["false_hit_rate"], 3), r.get("near_misses", 0),
                     "/".join(output.fmt(hit[p], 1) for p in ("p50", "p95", "p99")),
                     "/".join(output.fmt(miss[p], 1) for p in ("p50", "p95", "p99")),
                     r.get("tokens_saved", 0), r.get("time_saved_s", 0.0)])
    output.show(title, columns, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    workload.add_arguments(parser)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--think-ms", type=float, default=400, help="test backend's delay before the first token")
    parser.add_argument("--tokens-per-s", type=float, default=50, help="test backend's token rate; 0: instant")
    parser.add_argument("--policies", type=Path, default=stack.DEFAULT_POLICIES)
    parser.add_argument("--proxy", help="base URL of a running catcache (…/v1) instead of starting one")
    parser.add_argument("--model", default=MODEL,
                        help="model name sent with each query; name one priced in the policy to see cost saved")
    parser.add_argument("--name", default="replay", help="results file: bench/results/NAME.json")
    args = parser.parse_args()
    name, queries, grader = workload.load(args)
    with stack.catcache(args.think_ms, args.tokens_per_s, args.policies, args.proxy) as base_url:
        result = asyncio.run(replay(base_url, queries, args.concurrency, args.policies, model=args.model,
                                    grader=grader))
    show(f"replay of {name}: {len(queries)} queries, concurrency {args.concurrency}, "
         f"{result['queries_per_s']} q/s", result["rates"])
    output.save(args.name, {
        "workload": name, "queries": len(queries), "concurrency": args.concurrency, "model": args.model,
        "backend": None if args.proxy else {"think_ms": args.think_ms, "tokens_per_s": args.tokens_per_s},
        "policies": str(args.policies), "proxy": args.proxy or "fresh", **result,
    })


if __name__ == "__main__":
    main()
