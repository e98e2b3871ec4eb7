"""The feature rows of the side by side, as small scripted probes: what each system does, not what its docs say.

- multi-turn: the same last question after different earlier turns; safe if the second
  conversation is not served the first one's answer.
- tenants: the same question under two API keys; isolated if the second key misses.
- stream: a streamed answer, then the same request streamed again; replayed if the second is
  served from the cache with the same text.
- feedback: a hit reported wrong through the system's own API; evicted if the next ask misses.

Proxies (catcache, LiteLLM) are probed over HTTP with the OpenAI SDK; a hit is an answer number
of the test backend seen before. Libraries (RedisVL, GPTCache) are probed through their calls,
with the prompt their docs pass (RedisVL: a prompt string, here the last user turn; GPTCache:
its default `last_content`, the last message). Each probe uses questions no stream contains.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import httpx
import numpy as np
from openai import OpenAI

from bench import stack
from bench.peer_gptcache import GPTCachePeer
from bench.peer_litellm import MODEL
from bench.peer_litellm import proxy as litellm_proxy
from bench.peer_redisvl import RedisVLPeer
from bench.peer_replay import answer_number, ask

EARLIER = ("Let's talk about Python.", "Let's talk about JavaScript.")
QUESTION = "How do I reverse a list?"
# A longer first turn where one word changes the answer: a joined-text embedding barely moves.
LONG_EARLIER = tuple(f"We are planning a family trip next spring with two children aged six and nine, on a "
                     f"modest budget, travelling by train, and we have decided to spend the whole week in {city}."
                     for city in ("Paris", "Tokyo"))
LONG_QUESTION = "What should we visit on the first day?"


def conversation(earlier: str, question: str) -> list[dict]:
    return [{"role": "user", "content": earlier}, {"role": "assistant", "content": "Sure, go ahead."},
            {"role": "user", "content": question}]


def probe_proxy(base_url: str, keys: tuple[str, str], feedback: Callable[[httpx.Response, str], httpx.Response]
                ) -> dict:
    """The four probes through a proxy; `feedback` reports the hit whose raw response it is given."""
    tag = uuid.uuid4().hex[:6]
    first, second = (OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=60) for key in keys)
    result = {}

    question = f"{QUESTION} ({tag})"
    a, _ = ask(first, MODEL, conversation(EARLIER[0], question))
    b, _ = ask(first, MODEL, conversation(EARLIER[1], question))
    served = answer_number(a) == answer_number(b)
    result["multi_turn"] = {"safe": not served, "seen": "served the other conversation's answer" if served
                            else "answered afresh"}
    question = f"{LONG_QUESTION} ({tag})"
    a, _ = ask(first, MODEL, conversation(LONG_EARLIER[0], question))
    b, _ = ask(first, MODEL, conversation(LONG_EARLIER[1], question))
    served = answer_number(a) == answer_number(b)
    result["multi_turn_long"] = {"safe": not served, "seen": "a trip to Tokyo was served the answer for Paris"
                                 if served else "answered afresh"}

    question = f"What is the tallest mountain in Europe? ({tag})"
    a, _ = ask(first, MODEL, [{"role": "user", "content": question}])
    try:
        b, _ = ask(second, MODEL, [{"role": "user", "content": question}])
        served = answer_number(a) == answer_number(b)
        result["tenants"] = {"isolated": not served, "seen": "second key served the first key's answer" if served
                             else "second key answered afresh"}
    except Exception as exc:  # noqa: BLE001 - what the system did is the result
        result["tenants"] = {"isolated": None, "seen": f"second key refused: {type(exc).__name__}"}

    question = f"Write a haiku about caches. ({tag})"
    a, _ = ask(first, MODEL, [{"role": "user", "content": question}], stream=True)
    b, _ = ask(first, MODEL, [{"role": "user", "content": question}], stream=True)
    c, _ = ask(first, MODEL, [{"role": "user", "content": question}])
    replayed = answer_number(a) == answer_number(b) and a == b
    result["stream"] = {"replayed": replayed, "seen": ("streamed again from the cache" if replayed
                                                       else "the stream was not served from the cache")
                        + ("; served to a non-streamed request too" if answer_number(c) == answer_number(a)
                           else "")}

    question = f"Who painted the Mona Lisa? ({tag})"
    ask(first, MODEL, [{"role": "user", "content": question}])
    raw = first.chat.completions.with_raw_response.create(model=MODEL, messages=[{"role": "user", "content": question}])
    hit = raw.parse().choices[0].message.content or ""
    reported = feedback(raw, keys[0])
    again, _ = ask(first, MODEL, [{"role": "user", "content": question}])
    evicted = answer_number(again) != answer_number(hit)
    result["feedback"] = {"evicted": evicted, "seen": f"report answered {reported.status_code}: "
                          f"{reported.text[:160]}; " + ("the next ask missed" if evicted else "the next ask hit again")}
    first.close()
    second.close()
    return result


def catcache_feedback(base_url: str) -> Callable[[httpx.Response, str], httpx.Response]:
    def report(raw: object, key: str) -> httpx.Response:
        entry = raw.headers.get("x-catcache-key")
        return httpx.post(f"{base_url}/cache/feedback", json={"key": entry, "correct": False},
                          headers={"Authorization": f"Bearer {key}"})
    return report


def litellm_feedback(base_url: str, master_key: str) -> Callable[[httpx.Response, str], httpx.Response]:
    """LiteLLM has no feedback endpoint; the nearest is POST /cache/delete with the hit's cache key."""
    root = base_url.removesuffix("/v1")

    def report(raw: object, key: str) -> httpx.Response:
        entry = raw.headers.get("x-litellm-cache-key")
        return httpx.post(f"{root}/cache/delete", json={"keys": [entry]},
                          headers={"Authorization": f"Bearer {master_key}"})
    return report


def probe_redisvl(url: str, cosine: float, embed: Callable[[str], np.ndarray]) -> dict:
    cache = RedisVLPeer(cosine, embed, url)
    try:
        cache.store(conversation(EARLIER[0], QUESTION)[-1]["content"], "answer in Python")
        served = cache.lookup(conversation(EARLIER[1], QUESTION)[-1]["content"])
        result = {"multi_turn": {"safe": served is None, "seen": "the prompt is a string; with the last turn as "
                                 "the prompt the other conversation was served" if served else "answered afresh"},
                  "tenants": {"isolated": None, "seen": "a library with no API keys: every caller of one "
                              "SemanticCache shares it (filterable_fields can scope it, in the app's code)"},
                  "stream": {"replayed": None, "seen": "stores strings: the app joins a stream before store() "
                             "and re-streams a hit itself"}}
        cache.store(conversation(LONG_EARLIER[0], LONG_QUESTION)[-1]["content"], "Paris")
        served = cache.lookup(conversation(LONG_EARLIER[1], LONG_QUESTION)[-1]["content"])
        result["multi_turn_long"] = {"safe": served is None, "seen": "as above: the Tokyo trip was served the "
                                     "answer for Paris" if served else "answered afresh"}
        cache.store("Who painted the Mona Lisa?", "Leonardo")
        cache.lookup("Who painted the Mona Lisa?")
        cache.cache.drop(ids=[cache.last_id])
        evicted = cache.lookup("Who painted the Mona Lisa?") is None
        result["feedback"] = {"evicted": evicted, "seen": "check() returns the entry id and drop(ids=[...]) deletes it"
                              + ("; the next check missed" if evicted else "; the next check still hit")}
        return result
    finally:
        cache.close()


def probe_gptcache(cosine: float, embed: Callable[[str], np.ndarray]) -> dict:
    from gptcache.adapter import api
    from gptcache.processor.pre import last_content

    cache = GPTCachePeer(cosine, embed, 100)
    try:
        prompt = last_content  # GPTCache's default pre-processor: the last message's content
        cache.store(prompt({"messages": conversation(EARLIER[0], QUESTION)}), "answer in Python")
        served = cache.lookup(prompt({"messages": conversation(EARLIER[1], QUESTION)}))
        cache.store(prompt({"messages": conversation(LONG_EARLIER[0], LONG_QUESTION)}), "Paris")
        served_long = cache.lookup(prompt({"messages": conversation(LONG_EARLIER[1], LONG_QUESTION)}))
        result = {"multi_turn": {"safe": served is None, "seen": "its default last_content embeds the last message "
                                 "only: the other conversation was served" if served else "answered afresh"},
                  "multi_turn_long": {"safe": served_long is None, "seen": "as above: the Tokyo trip was served "
                                      "the answer for Paris" if served_long else "answered afresh"},
                  "tenants": {"isolated": None, "seen": "a library with no API keys: every caller of one Cache "
                              "shares it"}}
        try:
            from gptcache.adapter import openai as adapter

            adapter.ChatCompletion.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True)
            result["stream"] = {"replayed": None, "seen": "its OpenAI adapter ran"}
        except Exception as exc:  # noqa: BLE001 - what the library did is the result
            result["stream"] = {"replayed": False, "seen": f"its OpenAI adapter (the one that caches streams) "
                                f"fails with the installed openai SDK: {type(exc).__name__}: {str(exc)[:120]}"}
        deleting = sorted(n for n in dir(api) if any(w in n.lower() for w in ("delete", "evict", "remove", "drop")))
        result["feedback"] = {"evicted": False if not deleting else None,
                              "seen": "get() returns the answer only, no entry id, and gptcache.adapter.api has no "
                              "delete" if not deleting else f"gptcache.adapter.api offers {deleting}"}
        return result
    finally:
        cache.close()


def run_all(backend_url: str, embed_url: str, redis_url: str, litellm: Path | None, policies: Path,
            embed: Callable[[str], np.ndarray], hits: dict) -> dict:
    """Each system at the threshold of its hit-rate row (the first stream's best; catcache as shipped)."""
    first = next(iter(hits.values()))
    results = {}
    keys = ("sk-tenant-a-" + uuid.uuid4().hex, "sk-tenant-b-" + uuid.uuid4().hex)
    with stack.proxy(backend_url, policies) as catcache:
        results["catcache"] = probe_proxy(catcache.base_url, keys, catcache_feedback(catcache.base_url))
    print(f"  probes catcache {results['catcache']}", flush=True)
    best = first["RedisVL"]["best"]
    if litellm and best:
        with ExitStack() as running:
            url, master = running.enter_context(litellm_proxy(litellm, backend_url, embed_url, redis_url,
                                                              best["cosine"], tenant_keys=keys))
            results["LiteLLM"] = {"cosine": best["cosine"], **probe_proxy(url, keys, litellm_feedback(url, master))}
        print(f"  probes LiteLLM {results['LiteLLM']}", flush=True)
    if best:
        results["RedisVL"] = {"cosine": best["cosine"], **probe_redisvl(redis_url, best["cosine"], embed)}
    if first["GPTCache"]["best"]:
        cosine = first["GPTCache"]["best"]["cosine"]
        results["GPTCache"] = {"cosine": cosine, **probe_gptcache(cosine, embed)}
    return results
