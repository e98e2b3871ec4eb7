"""Cold start: one pass of a labeled stream through a fresh `catcache serve` that learns its
thresholds from the traffic (`python -m bench.replay --cold-start ...`).

The policy is the shipped one with `learning.enabled: true`; the cache and the learned state start
empty; the test backend answers every query of a group alike (bench/group_answers.py), so the
learner's judge has something true to compare. The stream is sent in chunks (concurrency inside
each); after each chunk the proxy's /stats says what every category has learned so far, which
gives the thresholds over time. Graded as bench.replay grades (the workload's labels), over the
whole stream and its second half, and also by the answers (a hit whose answer the backend would
not have given this query: what the cache's own estimate estimates). Extra backend calls are the
backend's calls beyond the requests the proxy sent on as misses, IC answers or bypasses.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import yaml

from bench import group_answers, stack
from bench.replay import HITS, Answer, grade, send_all, thresholds_of
from catcache.verify.labels import Grader

CHUNK = 250
SENT_ON = ("miss", "ic", "bypass")


def learning_policy(policies: Path, target: float | None) -> dict:
    policy = yaml.safe_load(Path(policies).read_text())
    learning = policy.setdefault("learning", {})
    learning["enabled"] = True
    if target is not None:
        learning["target_false_hit_rate"] = target
    return policy


def run(queries: list[dict], grader: Grader, policies: Path, concurrency: int, target: float | None,
        report_html: Path | None = None) -> dict:
    policy = learning_policy(policies, target)
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="replies-", delete=False) as replies:
        json.dump(group_answers.answers(queries), replies)
    try:
        with stack.test_server(stack.SERVERS["uvicorn"], "--think-ms", "0", "--tokens-per-s", "0",
                               "--replies", replies.name) as backend_url:
            for settings in (policy.get("backends") or {}).values():
                settings["url"] = backend_url
            with stack.served(policy, None, backend_url) as proxy:
                answers, timeline = asyncio.run(_replay(proxy.base_url, proxy.url, queries, concurrency))
                calls = httpx.get(backend_url.removesuffix("/v1") + "/stats").json()
                shadow_calls = counter_total(httpx.get(f"{proxy.url}/metrics").text, "catcache_shadow_checks_total")
                if report_html is not None:  # `catcache report` of the proxy's Redis, while it still runs
                    subprocess.run([sys.executable, "-m", "catcache", "report", "--data-dir", str(proxy.data_dir),
                                    "--since", "1h", "--format", "html", "--out", str(report_html)], check=True)
    finally:
        Path(replies.name).unlink(missing_ok=True)
    limits = thresholds_of(policy.get("categories") or {})
    half = len(queries) // 2
    sent_on = sum(a.outcome in SENT_ON for a in answers)
    backend_calls = sum(count for path, count in calls.items() if path.endswith("completions"))
    learned = timeline[-1]["learning"] if timeline else {}
    judge_calls = sum(point.get("judged", 0) for point in learned.values()) \
        if policy["learning"].get("judge", {}).get("kind") == "llm" else 0
    return {
        "rates": grade(queries, answers, limits, grader),
        "second_half": grade(queries, answers, limits, grader, first=half)["overall"],
        "answer_false_rate": answer_false_rate(queries, answers),
        "estimate": overall_estimate(learned),
        "learned": learned,
        "timeline": timeline,
        "backend_calls": backend_calls,
        # Calls beyond one per request sent on: the learner's (shadow checks, an LLM judge's) and the IC
        # router's (a near miss asked of the small backend first, which falls through to the large one
        # when unsure).
        "extra_calls": backend_calls - sent_on,
        "judge_calls": judge_calls,
        "shadow_calls": shadow_calls,
        "learning_extra_call_share": round((judge_calls + shadow_calls) / len(queries), 4),
        "ic_fall_throughs": backend_calls - sent_on - judge_calls - shadow_calls,
        "vouched_hits": sum(point.get("vouched", {}).get("served", 0) for point in learned.values()),
        "explored": sum(point.get("explored", 0) for point in learned.values()),
        "explored_share": round(sum(a.verdict is not None and a.verdict.startswith("explored") for a in answers)
                                / len(queries), 4),
        "target": policy["learning"].get("target_false_hit_rate", 0.02),
    }


async def _replay(base_url: str, proxy_url: str, queries: list[dict], concurrency: int
                  ) -> tuple[list[Answer], list[dict]]:
    answers: list[Answer] = []
    timeline = []
    async with httpx.AsyncClient(timeout=30) as client:
        for start in range(0, len(queries), CHUNK):
            chunk = [q["text"] for q in queries[start:start + CHUNK]]
            answers += await send_all(base_url, chunk, concurrency, progress=False)
            await asyncio.sleep(1.5)  # the learner syncs with Redis every second
            stats = (await client.get(f"{proxy_url}/stats", params={"since": "1d"})).json()
            timeline.append({"queries": len(answers), "learning": stats.get("learning", {})})
    return answers, timeline


def counter_total(metrics: str, name: str) -> int:
    """The sum of a Prometheus counter's series in a /metrics text."""
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(name + "{")))


def answer_false_rate(queries: list[dict], answers: list[Answer]) -> float | None:
    """Hits whose cached answer is not the one the backend gives the query (over all hits)."""
    said = group_answers.answers(queries)
    stored: dict[str, int] = {}
    for i, answer in enumerate(answers):
        if answer.outcome == "miss" and answer.key:
            stored.setdefault(answer.key, i)
    hits = [(i, stored.get(a.key or "")) for i, a in enumerate(answers) if a.outcome in HITS]
    graded = [(i, j) for i, j in hits if j is not None]
    wrong = sum(said[queries[i]["text"]] != said[queries[j]["text"]] for i, j in graded)
    return round(wrong / len(graded), 4) if graded else None


def overall_estimate(learned: dict[str, dict]) -> dict | None:
    """The categories' estimates weighted by their hits: the cache's estimate of its false-hit rate."""
    hits = sum(point["hits"] for point in learned.values())
    if not hits:
        return None
    return {bound: round(sum(point[bound] * point["hits"] for point in learned.values()) / hits, 4)
            for bound in ("estimate", "low", "high")}
