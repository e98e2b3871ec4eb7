"""One request as the pipeline carries it: what the client sent, parsed once, and what the cache
tiers found for it (`Found`, made by proxy/lookup.py)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np
import orjson
from fastapi import Request
from fastapi.responses import Response

from catcache.backends.client import forwardable
from catcache.policy.schema import Category, Policy
from catcache.proxy.canonical import CanonicalRequest, InvalidRequest, canonicalise
from catcache.proxy.learner import Check
from catcache.proxy.tenancy import cache_control, tenant_of
from catcache.reports.record import Outcome
from catcache.responses import openai_error
from catcache.store.documents import Document

Band = list[tuple[float, str]]  # (similarity, entry id) of the neighbours inside the IC band


@dataclass(frozen=True)
class Found:
    """What the cache tiers made of a request, before any backend is called."""

    outcome: Outcome                     # HIT_EXACT, HIT_SEMANTIC, MISS or BYPASS
    doc: Document | None = None          # the entry to serve, for a hit
    band: Band = field(default_factory=list)
    category: str = ""                   # "" until the request is classified
    rules: Category | None = None        # the policy of `category`
    doc_id: str = ""                     # the exact tier's key, the tenant's own unless the category is shared
    scope_key: str = ""                  # the semantic tier's scope, scoped the same way
    vector: np.ndarray | None = None     # the query's embedding, once computed
    similarity: float | None = None      # the nearest neighbour's, or the served one's
    verdict: str | None = None           # why a near neighbour was refused, if one was
    stale: list[tuple[str, str]] = field(default_factory=list)  # (category, id): indexed, gone from Redis
    cell: str = ""                       # the kind of answer the query asks for: the learner's finer key
    best: tuple[float, Document] | None = None  # the best neighbour the verifier accepted, served or not
    vouched: bool = False                # served under the threshold on the entry's own evidence


@dataclass
class Exchange:
    """What the pipeline knows about one request so far."""

    endpoint: str                        # "chat" or "completions"
    path: str
    body: dict
    canon: CanonicalRequest
    headers: dict[str, str]              # the client's, as forwarded to a backend
    tenant: str | None
    stream: bool
    include_usage: bool                  # the client asked for the usage chunk of a stream
    control: str | None                  # Cache-Control: "no-store", "no-cache" or None
    category_header: str | None = None   # x-catcache-category, the client's own classification
    started: float = field(default_factory=time.perf_counter)
    found: Found = field(default_factory=lambda: Found(Outcome.BYPASS))
    verdict: str | None = None           # the tiers', then the IC router's, reason for passing a neighbour by
    check: Check | None = None           # a neighbour whose answer the fresh one will be judged against
    looking: asyncio.Future | None = None  # the lookup, when a speculative answer came before it ended

    def learn(self, found: Found) -> None:
        self.found, self.verdict = found, found.verdict

    @property
    def category(self) -> str:
        return self.found.category

    @property
    def rules(self) -> Category | None:
        return self.found.rules

    @property
    def doc_id(self) -> str:
        return self.found.doc_id

    @property
    def scope_key(self) -> str:
        return self.found.scope_key

    @property
    def vector(self) -> np.ndarray | None:
        return self.found.vector

    @property
    def similarity(self) -> float | None:
        return self.found.similarity

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000


# Bodies larger than this are parsed and put in canonical form in a worker thread: that is pure
# Python over every message (a 1 MB body of short messages takes a few hundred ms), and on the
# event loop it would hold up every other request. In a thread it yields the GIL every 5 ms.
OFF_LOOP_BYTES = 64 * 1024


async def parse(request: Request, endpoint: str, policy: Policy, raw: bytes | None = None) -> Exchange | Response:
    """The request as an Exchange, or the 400 that tells the client why it is not one."""
    raw = await request.body() if raw is None else raw
    try:
        if len(raw) > OFF_LOOP_BYTES:
            body, canon = await asyncio.to_thread(_canonical, raw, endpoint)
        else:
            body, canon = _canonical(raw, endpoint)
    except orjson.JSONDecodeError as exc:
        return openai_error(400, f"We could not parse the JSON body of your request: {exc}")
    except InvalidRequest as exc:
        return openai_error(400, str(exc), param=exc.param)
    headers = forwardable(request.headers, drop={"accept-encoding"})
    stream = body.get("stream") is True
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        return openai_error(400, "'stream_options' must be an object.", param="stream_options")
    return Exchange(endpoint=endpoint, path=request.url.path, body=body, canon=canon, headers=headers,
                    tenant=tenant_of(request, policy), stream=stream,
                    include_usage=stream and bool(options.get("include_usage")),
                    control=cache_control(request.headers.get("cache-control", ""), request.headers.get("pragma", "")),
                    category_header=request.headers.get("x-catcache-category"))


def _canonical(raw: bytes, endpoint: str) -> tuple[dict, CanonicalRequest]:
    body = orjson.loads(raw)
    return body, canonicalise(endpoint, body)
