"""Traffic to drive a running catcache with, for tests and benchmarks: questions from many tenants
(an answer generated for one tenant must never reach another), and probes of how soon an entry
stored through one proxy is served by the others while they are all under load.

The answers are the fake backend's (`catcache.testing.backend`): "Answer #<n> to: ..." numbers
every generation, so a hit shows whose request its answer was made for.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import openai

POLL_S = 0.02
GENERATED = {"miss", "bypass", "ic"}  # outcomes whose answer the backend made for this request
QUESTIONS = [f"Question {i}: what is the story behind the {noun}?" for i, noun in enumerate(
    "lighthouse violin glacier compass teapot volcano lantern harbor orchard comet bridge "
    "windmill canyon typewriter telescope cathedral bicycle meteor anchor quilt".split())]
NUMBER = re.compile(r"Answer #(\d+)")


@dataclass
class Tally:
    answers: list[tuple[int, str, int]] = field(default_factory=list)  # (tenant, outcome, answer number)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def outcomes(self) -> Counter:
        return Counter(outcome for _, outcome, _ in self.answers)

    def cross_tenant(self) -> list[tuple[int, str, int]]:
        """Hits whose answer was generated for another tenant, or for no request seen at all."""
        owner = {number: tenant for tenant, outcome, number in self.answers if outcome in GENERATED}
        return [a for a in self.answers if a[1] not in GENERATED and owner.get(a[2]) != a[0]]


async def ask(api: openai.AsyncOpenAI, question: str, stream: bool) -> tuple[str, str]:
    raw = await api.chat.completions.with_raw_response.create(
        model="test-model", messages=[{"role": "user", "content": question}], stream=stream)
    parsed = raw.parse()
    if stream:
        text = "".join([c.choices[0].delta.content or "" async for c in parsed if c.choices])
    else:
        text = parsed.choices[0].message.content or ""
    return raw.headers.get("x-catcache", ""), text


async def drive(clients: list[openai.AsyncOpenAI], requests: int, concurrency: int, seed: int = 1) -> Tally:
    """`requests` requests from len(clients) tenants, `concurrency` at a time: 70% exact repeats,
    20% lower-case paraphrases, 10% streams, over the same questions for every tenant."""
    rng = random.Random(seed)
    plan = iter([(rng.randrange(len(clients)), rng.randrange(len(QUESTIONS)), rng.random())
                 for _ in range(requests)])
    tally = Tally()

    async def worker() -> None:
        for tenant, index, draw in plan:
            question = QUESTIONS[index].lower() if 0.7 <= draw < 0.9 else QUESTIONS[index]
            try:
                outcome, text = await ask(clients[tenant], question, stream=draw >= 0.9)
                found = NUMBER.search(text)
                if found is None:
                    raise ValueError(f"an answer the test backend did not make: {text[:80]!r}")
                tally.answers.append((tenant, outcome, int(found.group(1))))
            except (openai.OpenAIError, ValueError) as exc:
                tally.errors.append(repr(exc))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    tally.seconds = time.perf_counter() - started
    return tally


async def store(http: httpx.AsyncClient, base_url: str, text: str) -> str:
    """Send `text` as a new question; the answer it was given (and stored)."""
    response = await http.post(f"{base_url}/chat/completions",
                               json={"model": "test-model", "messages": [{"role": "user", "content": text}]})
    response.raise_for_status()
    assert response.headers["x-catcache"] == "miss", response.headers["x-catcache"]
    return response.json()["choices"][0]["message"]["content"]


async def is_hit(http: httpx.AsyncClient, base_url: str, text: str) -> bool:
    """One lookup of `text` that stores nothing if it misses."""
    body = {"model": "test-model", "stream": True, "messages": [{"role": "user", "content": text}]}
    async with http.stream("POST", f"{base_url}/chat/completions", json=body,
                           headers={"x-test-truncate": "1"}) as response:
        return response.headers.get("x-catcache", "").startswith("hit")


async def seconds_until_hit(http: httpx.AsyncClient, base_url: str, text: str, deadline_s: float) -> float | None:
    """Seconds from now until `base_url` serves `text` from the cache; None past `deadline_s`."""
    started = time.perf_counter()
    while time.perf_counter() - started < deadline_s:
        if await is_hit(http, base_url, text):
            return time.perf_counter() - started
        await asyncio.sleep(POLL_S)
    return None


async def propagation(urls: list[str], texts: list[str], deadline_s: float, api_key: str) -> list[float | None]:
    """For each text: store it through one proxy (in turn), then the delay until every other serves it."""
    delays: list[float | None] = []
    async with httpx.AsyncClient(timeout=30, headers={"authorization": f"Bearer {api_key}"}) as http:
        for n, text in enumerate(texts):
            origin = urls[n % len(urls)]
            await store(http, origin, text)
            others = [url for url in urls if url != origin]
            found = await asyncio.gather(*(seconds_until_hit(http, url, text.lower(), deadline_s) for url in others))
            delays.extend(found)
    return delays


async def load(urls: list[str], concurrency: int, stop: asyncio.Event) -> int:
    """New questions to every proxy in turn until `stop`; the number sent."""
    sent = itertools.count()
    async with httpx.AsyncClient(timeout=30, headers={"authorization": "Bearer sk-load"}) as http:
        async def worker(offset: int) -> None:
            for n in itertools.count(offset, concurrency):
                if stop.is_set():
                    return
                body = {"model": "test-model",
                        "messages": [{"role": "user", "content": f"Load question {n} {time.time_ns()}?"}]}
                await http.post(f"{urls[n % len(urls)]}/chat/completions", json=body)
                next(sent)

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return next(sent)
