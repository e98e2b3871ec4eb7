"""Redis memory per cached entry, for the capacity table in the README.

    python -m bench.redis_memory [--entries 20000] [--answer-chars 1200]

Writes `--entries` entries through DocumentStore into a fresh embedded Redis, each like a real
one: a chat completion whose answer has `--answer-chars` characters (1,200 is about 300 tokens),
the canonical request, the query and its 384-dimension embedding, in one category's score set
and the event stream. Reports INFO's used_memory growth divided by the entries.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
from pathlib import Path

import numpy as np
import orjson
from redis.asyncio import Redis

from bench import output
from catcache.store.documents import Document, DocumentStore
from catcache.store.embedded import EmbeddedRedis

DIM = 384


def entry(n: int, rng: random.Random, answer_chars: int) -> Document:
    query = f"Question {n}: how does {rng.random():.6f} relate to the price of tea in region {n % 97}?"
    answer = "".join(rng.choice("abcdefghij klmnopqrstuvwxyz") for _ in range(answer_chars))
    response = {"id": f"chatcmpl-{n}", "object": "chat.completion", "created": 1700000000, "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                             "finish_reason": "stop", "logprobs": None}],
                "usage": {"prompt_tokens": 20, "completion_tokens": answer_chars // 4, "total_tokens": 300}}
    request = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": query}]})
    vector = np.random.default_rng(n).standard_normal(DIM).astype(np.float32)
    return Document(f"{n:064x}", "chat", "m", "factual", f"{n % 1000:064x}", query, response, request,
                    latency_ms=500.0, embedding=vector / np.linalg.norm(vector))


async def measure(url: str, entries: int, answer_chars: int) -> dict:
    redis = Redis.from_url(url)
    store = DocumentStore(redis, origin="bench")
    rng = random.Random(3)
    before = (await redis.info("memory"))["used_memory"]
    for start in range(0, entries, 50):
        await asyncio.gather(*(store.put(entry(n, rng, answer_chars), 86400, "lru", entries + 1)
                               for n in range(start, min(start + 50, entries))))
    after = (await redis.info("memory"))["used_memory"]
    await redis.aclose()
    return {"entries": entries, "answer_chars": answer_chars, "bytes_per_entry": round((after - before) / entries)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=20000)
    parser.add_argument("--answer-chars", type=int, default=1200)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="catcache-redis-memory-") as tmp, EmbeddedRedis(Path(tmp)) as server:
        result = asyncio.run(measure(server.url, args.entries, args.answer_chars))
    output.show("Redis memory per cached entry", ["entries", "answer chars", "bytes per entry"],
                [[result["entries"], result["answer_chars"], result["bytes_per_entry"]]])
    output.save("redis_memory", result, args.out)


if __name__ == "__main__":
    main()
