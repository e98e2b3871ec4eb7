"""Smoke tests: every benchmark runs end to end on a tiny input, and the grading is right.

The full runs are `@pytest.mark.slow` (`pytest -m slow`); the default suite only checks that each
benchmark still works against the current proxy, in well under a minute.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from bench import feedback, ic_load, judge_error, lookup_cost, overhead, profile, replay, scale, stack, workload
from bench.heldout import read_jsonl
from bench.output import RESULTS
from catcache.verify.labels import Grader

ROOT = Path(__file__).parents[2]
STREAM = Path(__file__).parent / "data" / "bench_stream.jsonl"


@pytest.fixture(scope="module")
def running() -> Iterator[tuple[str, str]]:
    """(backend base URL, catcache base URL), one fresh stack for the module."""
    with stack.backend(0, 0) as backend_url, stack.proxy(backend_url) as proxy:
        yield backend_url, proxy.base_url


def answer(outcome: str, key: str | None) -> replay.Answer:
    return replay.Answer(outcome, key, "factual", None, None, 1.0, 10)


def test_cold_start_grades_hits_by_the_answers_and_weights_the_estimate() -> None:
    from bench import cold_start, group_answers

    rows = [{"text": "a?", "group": "g1"}, {"text": "b?", "group": "g2"}, {"text": "c?", "group": "g1"},
            {"text": "d?", "group": "g3", "answer": "Paris"}]
    said = group_answers.answers(rows)
    assert said["a?"] == said["c?"] != said["b?"] and said["d?"] == "Paris"
    answers = [answer("miss", "k1"), answer("miss", "k2"), answer("hit-semantic", "k1"), answer("hit-semantic", "k2")]
    assert cold_start.answer_false_rate(rows, answers) == 0.5  # c? got a?'s answer (right), d? got b?'s (wrong)
    learned = {"x": {"hits": 30, "estimate": 0.01, "low": 0.0, "high": 0.02},
               "y": {"hits": 10, "estimate": 0.05, "low": 0.01, "high": 0.1}}
    assert cold_start.overall_estimate(learned) == {"estimate": 0.02, "low": 0.0025, "high": 0.04}


def test_grade_tells_correct_from_false_hits() -> None:
    queries = [{"text": t, "group": g, "category": "c"} for t, g in
               [("a", "g1"), ("b", "g2"), ("a'", "g1"), ("b'", "g3"), ("c", "g4")]]
    answers = [answer("miss", "k1"), answer("miss", "k2"), answer("hit-semantic", "k1"),
               answer("hit-semantic", "k2"), answer("miss", "k5")]
    overall = replay.grade(queries, answers, {})["overall"]
    assert (overall["repeatable"], overall["hits"], overall["correct"], overall["false"]) == (1, 2, 1, 1)
    assert overall["hit_rate"] == 1.0 and overall["false_hit_rate"] == 0.5


def row(text: str, group: str, answer: str | None = None) -> dict:
    return {"text": text, "group": group, **({"answer": answer} if answer is not None else {})}


def test_servable_counts_rows_an_earlier_row_could_answer_by_group_or_answer() -> None:
    rows = [row("a", "g1", "x"), row("b", "g2", "x"), row("c", "g3", "y"), row("c'", "g3", "y")]
    assert workload.servable(Grader.for_rows(rows), rows) == [False, True, False, True]


def test_servable_with_partial_labels_counts_only_labeled_partners() -> None:
    pairs = [{"a": "How can I access Facebook in China?", "b": "How do I use Facebook in China?", "equivalent": True},
             {"a": "Is 2016 a leap year?", "b": "Is 2017 a leap year?", "equivalent": False}]
    rows = [row("How can I access Facebook in China?", "p1"), row("Is 2016 a leap year?", "p2"),
            row("How do I use Facebook in China?", "p1"), row("Is 2017 a leap year?", "p3"), row("Facebook in China?", "p4")]
    assert workload.servable(Grader.for_rows(rows, pairs), rows) == [False, False, True, False, False]


def test_judge_error_samples_false_pairs_up_to_half_in_stream_order() -> None:
    pairs = [(row(f"q{k}", f"g{k}"), row(f"p{k}", f"h{k}"), k % 5 != 0) for k in range(40)]  # 8 false of 40
    taken = judge_error.sample(pairs, 10, seed=1)
    assert sum(not p[2] for p in taken) == 5 and len(taken) == 10
    assert [pairs.index(p) for p in taken] == sorted(pairs.index(p) for p in taken)
    assert taken == judge_error.sample(pairs, 10, seed=1) != judge_error.sample(pairs, 10, seed=2)
    assert sum(not p[2] for p in judge_error.sample(pairs, 30, seed=1)) == 8  # every false pair, the rest right


def test_ic_load_counts_near_misses_offload_and_grades_ic_answers_by_gold() -> None:
    base = yaml.safe_load(stack.DEFAULT_POLICIES.read_text())
    policy = ic_load.arm_policy(base, "http://large/v1", "http://small/v1", ic=True, small_full_at=1, adaptive=False)
    assert policy["categories"]["factual"]["ic"]["small_full_at"] == 1 and not policy["adaptive"]["enabled"]
    assert all("ic" not in c for c in ic_load.arm_policy(base, "l", "s", False, None, True)["categories"].values())
    queries = [{"text": t, "group": g, "answer": a, "category": "factual"} for t, g, a in
               [("q1", "g1", "Paris"), ("q2", "g2", "Rome"), ("q1'", "g1", "Paris"), ("q3", "g3", "Oslo"),
                ("q4", "g4", "Bern"), ("q5", "g5", "Nice")]]

    def said(outcome: str, key: str | None, similarity: float | None, reply: str, verdict: str | None = None):
        return replay.Answer(outcome, key, "factual", similarity, verdict, 100.0, 10, reply)

    answers = [said("miss", "k1", None, "The answer is paris."), said("miss", "k2", None, "The answer is rome."),
               said("hit-semantic", "k1", 0.97, "The answer is paris."),
               said("ic", None, 0.92, "It is Oslo."), said("ic", None, 0.91, "Lyon."),  # one right, one wrong
               said("miss", "k6", 0.93, "The answer is nice.", "ic: small answer not sure enough (-2.1)")]
    result = ic_load.summarize(queries, answers, policy, Grader.for_rows(queries), large_calls=3, seconds=2.0)
    assert (result["near_misses"], result["ic_answers"], result["ic_correct"]) == (3, 2, 0.5)
    assert result["near_misses_to_large"] == {"ic: small answer not sure enough": 1}
    assert result["large_share"] == 0.5 and result["hits"] == 1 and result["false_hit_rate"] == 0.0
    assert result["answers_correct"] == round(5 / 6, 4)


def test_replay_against_a_running_proxy(running: tuple[str, str]) -> None:
    _, proxy_url = running
    name = "tmp/test-replay"
    subprocess.run([sys.executable, "-m", "bench.replay", "--stream", str(STREAM), "--proxy", proxy_url,
                    "--concurrency", "1", "--name", name], cwd=ROOT, check=True, capture_output=True)
    overall = json.loads((RESULTS / f"{name}.json").read_text())["rates"]["overall"]
    assert overall["queries"] == 6 and overall["repeatable"] == 3
    assert overall["hit-exact"] >= 2 and overall["false"] == 0


def test_overhead_measures_misses_hits_and_throughput(running: tuple[str, str]) -> None:
    backend_url, proxy_url = running
    result = asyncio.run(overhead.measure(backend_url, {"catcache": proxy_url}, n=3, total=6))["catcache"]
    assert result["miss"]["outcomes"] == {"miss": 3} and result["no_store"]["outcomes"] == {"bypass": 3}
    assert result["exact_hit"]["hits"] == 3 and result["semantic_hit"]["hits"] == 3
    assert set(result["inside_ms"]) == {"miss", "bypass", "hit-exact", "hit-semantic"}
    assert all(ms > 0 for ms in result["inside_ms"].values())
    assert [p["concurrency"] for p in result["throughput"]["exact"]] == list(overhead.CONCURRENCY)


def test_overhead_under_load_counts_hits_misses_and_speculation(running: tuple[str, str]) -> None:
    backend_url, proxy_url = running
    result = asyncio.run(overhead.under_load(backend_url, {"catcache": proxy_url}, requests=4, concurrency=2,
                                             hit_rate=0.5, rounds=1))["catcache"]
    assert result["outcomes"] == {"hit-semantic": 2, "miss": 2}
    assert result["sent"] == 0 and result["backend_calls_beyond_misses"] == 0, "the shipped policy never speculates"


def test_scale_on_a_small_index() -> None:
    result = scale.search_ms(200)
    assert result["search_ms"]["p50"] > 0 and result["bytes_per_entry"] >= 0
    rebuilt = asyncio.run(scale.rebuild_s(200))
    assert rebuilt["rebuilt"] == 200 and rebuilt["restarted_with"] == 202


def test_profile_groups_py_spy_samples(tmp_path: Path) -> None:
    raw = tmp_path / "samples.txt"
    raw.write_text(
        "Thread._bootstrap (threading.py:1);Embedder._run (embedder.py:2);Session.run (ort.py:3) 6\n"
        "_run_code (<frozen runpy>:1);Runner.run (asyncio/runners.py:1) 2\n"
        "_run_code (<frozen runpy>:1);CachePipeline.handle (pipeline.py:1);get_many (redis/client.py:9) 1\n"
        "_run_code (<frozen runpy>:1);H11Protocol.data_received (h11_impl.py:1) 1\n")
    assert profile.shares(raw) == {"onnxruntime forward pass (embedder thread)": 60.0,
                                   "the event loop itself (uvloop's C: polling, callbacks, socket reads)": 20.0,
                                   "Redis: client code and reply parsing": 10.0,
                                   "uvicorn, Starlette/FastAPI and middleware outside the pipeline": 10.0}


def test_lookup_cost_on_a_small_index() -> None:
    texts = [q["text"] for q in read_jsonl(STREAM)]
    result = asyncio.run(lookup_cost.measure(200, texts, stack.DEFAULT_POLICIES))
    assert result["with_embedding_ms"]["p50"] >= result["without_embedding_ms"]["p50"] > 0


def test_feedback_reports_each_hit_and_a_wrong_one_is_evicted(running: tuple[str, str]) -> None:
    text = "How do I learn Python quickly? (feedback bench)"
    queries = [{"text": text, "group": group} for group in ("g1", "g1", "g2", "g2")]  # g2: labeled otherwise

    class ByGroup:
        def right(self, query: dict, source: dict) -> bool:
            return query["group"] == source["group"]

    answers, sent = asyncio.run(feedback.run(running[1], queries, True, ByGroup()))
    assert [a.outcome for a in answers] == ["miss", "hit-exact", "hit-exact", "miss"]
    assert (sent["reports"], sent["wrong"], sent["gone"]) == (2, 1, 0)


@pytest.mark.slow
@pytest.mark.parametrize("command", [
    ["bench.overhead", "--queries", "20", "--requests", "40", "--name", "tmp/test-overhead"],
    ["bench.scale", "--sizes", "1000", "--name", "tmp/test-scale"],
    ["bench.lookup_cost", "--entries", "1000", "--queries", "20", "--name", "tmp/test-lookup"],
    ["bench.feedback", "--stream", str(STREAM), "--name", "tmp/test-feedback"],
    ["bench.replay", "--stream", str(STREAM), "--cold-start", "--name", "tmp/test-cold-start"],
    ["bench.routing", "--replicas", "2", "--requests", "40", "--out", str(RESULTS / "tmp" / "test-routing.json")],
    ["bench.propagation", "--probes", "3", "--out", str(RESULTS / "tmp" / "test-propagation.json")],
    ["bench.redis_memory", "--entries", "500", "--out", str(RESULTS / "tmp" / "test-redis-memory.json")],
    ["bench.ic_load", "--limit", "40", "--arms", "off,ic-capped", "--name", "tmp/test-ic-load"],  # the real small model
])
def test_command_line(command: list[str]) -> None:
    subprocess.run([sys.executable, "-m", *command], cwd=ROOT, check=True, timeout=600)
