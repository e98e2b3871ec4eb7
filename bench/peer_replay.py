"""Replaying a labeled stream through a cache, in order, one query at a time, and grading it.

Every system sees the same queries in the same order: a query that misses is answered (by the
test backend, or for a library by its index) and stored; a hit is graded by the labels of the
query whose answer it served (verify/labels.py), as bench.replay grades catcache.

- A library (RedisVL, GPTCache) stores the query's index as its answer, so a hit names its source.
- A proxy (catcache, LiteLLM) is asked through the OpenAI SDK; the test backend numbers its
  answers ("Answer #N to: ..."), so an answer number seen before is a hit, served from the query
  that first received it. This needs no header of either proxy.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from openai import OpenAI

from bench import output, workload
from catcache.verify.labels import Grader

ANSWER = re.compile(r"Answer #(\d+)")


class Library(Protocol):
    def lookup(self, text: str) -> str | None: ...
    def store(self, text: str, answer: str) -> None: ...
    def close(self) -> None: ...


@dataclass
class Replay:
    """Per query: the index of the query it was served from (None: a miss) and its latency."""

    sources: list[int | None] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    store_ms: list[float] = field(default_factory=list)  # libraries: the store after a miss
    answers: list[int | None] = field(default_factory=list)  # proxies: the backend's answer numbers

    def latencies(self, queries: Sequence[dict]) -> dict[str, dict]:
        """p50/p99 of misses, hits on the very same text, and hits on another text."""
        kinds: dict[str, list[float]] = {"miss": [], "same_text_hit": [], "semantic_hit": []}
        for query, source, ms in zip(queries, self.sources, self.latency_ms):
            kind = "miss" if source is None else (
                "same_text_hit" if queries[source]["text"] == query["text"] else "semantic_hit")
            kinds[kind].append(ms)
        return {k: {"n": len(v), **output.percentiles(v, (50, 99))} for k, v in kinds.items()}


def replay_library(cache: Library, queries: Sequence[dict]) -> Replay:
    """Check each query, store it on a miss (the app's code, as each library's docs show it)."""
    run = Replay()
    for i, query in enumerate(queries):
        started = time.perf_counter()
        served = cache.lookup(query["text"])
        run.latency_ms.append((time.perf_counter() - started) * 1000)
        run.sources.append(None if served is None else int(served))
        if served is None:
            started = time.perf_counter()
            cache.store(query["text"], str(i))
            run.store_ms.append((time.perf_counter() - started) * 1000)
    return run


def ask(client: OpenAI, model: str, messages: list[dict], **extra: object) -> tuple[str, float]:
    """(the answer's text, milliseconds) of one chat completion, streamed or not."""
    started = time.perf_counter()
    if extra.get("stream"):
        text = "".join((chunk.choices[0].delta.content or "") if chunk.choices else ""
                       for chunk in client.chat.completions.create(model=model, messages=messages, **extra))
    else:
        completion = client.chat.completions.create(model=model, messages=messages, **extra)
        text = completion.choices[0].message.content or ""
    return text, (time.perf_counter() - started) * 1000


def answer_number(text: str) -> int | None:
    found = ANSWER.search(text)
    return int(found.group(1)) if found else None


def replay_proxy(base_url: str, api_key: str, model: str, queries: Sequence[dict]) -> Replay:
    """Ask each query as a one-turn chat, one at a time; a repeated answer number is a hit."""
    run = Replay()
    first: dict[int, int] = {}
    with OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120) as client:
        for i, query in enumerate(queries):
            text, ms = ask(client, model, [{"role": "user", "content": query["text"]}])
            number = answer_number(text)
            source = first.get(number) if number is not None else None
            if number is not None and source is None:
                first[number] = i
            run.sources.append(source)
            run.latency_ms.append(ms)
            run.answers.append(number)
    return run


def proxy_lookup(base_url: str, api_key: str, model: str, known: set[int | None]) -> Callable[[str], int | None]:
    """A lookup through a proxy for exact_probe: the answer number if it is one of `known`, else None."""
    client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)

    def lookup(text: str) -> int | None:
        number = answer_number(ask(client, model, [{"role": "user", "content": text}])[0])
        return number if number in known else None

    return lookup


def grade(queries: Sequence[dict], sources: Sequence[int | None], grader: Grader) -> dict:
    """Hit rate (right hits / servable queries) and false-hit rate (wrong / graded hits)."""
    repeatable = hits = false = correct = 0
    for query, source, servable in zip(queries, sources, workload.servable(grader, list(queries))):
        repeatable += servable
        if source is not None:
            hits += 1
            right = grader.right(query, queries[source])
            correct += right is True
            false += right is False
    return {"queries": len(queries), "repeatable": repeatable, "hits": hits, "correct": correct, "false": false,
            "hit_rate": round(correct / repeatable, 4) if repeatable else None,
            "false_hit_rate": round(false / (correct + false), 4) if correct + false else None}


def exact_probe(lookup: Callable[[str], object], queries: Sequence[dict], replay: Replay, n: int = 200) -> dict:
    """p50/p99 of asking again the first `n` queries that were stored: each an exact repeat."""
    stored = [q["text"] for q, s in zip(queries, replay.sources) if s is None][:n]
    times, hits = [], 0
    for text in stored:
        started = time.perf_counter()
        hits += lookup(text) is not None
        times.append((time.perf_counter() - started) * 1000)
    return {"n": len(stored), "hits": hits, **output.percentiles(times, (50, 99))}


def best_under(sweep: Sequence[dict], bound: float) -> dict | None:
    """The sweep point with the most right hits whose false-hit rate is at most `bound`."""
    allowed = [r for r in sweep if (r["false_hit_rate"] or 0.0) <= bound]
    return max(allowed, key=lambda r: (r["hit_rate"] or 0.0, r["cosine"]), default=None)
