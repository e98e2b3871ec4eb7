"""One cacheable request, start to finish:

canonicalise -> classify (rules) -> functional tier -> embed -> classify (exemplars) ->
semantic tier (+ verifier) -> IC band -> large backend (single flight) -> store.

Any cache failure turns the request into a plain pass-through; the cache never turns a good
answer into an error.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import numpy as np
import orjson
from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from catcache.backends.client import BackendClient, forwardable
from catcache.backends.ic import agreement, confidence, confident_request, in_context_request, within_budget
from catcache.backends.replicas import affinity_key
from catcache.categories.classifier import Classification, RequestTraits
from catcache.index.hnsw import Neighbour
from catcache.verify.verifiers import load_verifier
from catcache.policy.schema import Category, Policy
from catcache.proxy.canonical import CanonicalRequest, InvalidRequest, canonicalise
from catcache.responses import backend_failed, json_response, openai_error
from catcache.proxy.sse import DONE, StreamAssembler, event_payloads, replay_chunks
from catcache.proxy.state import ProxyState
from catcache.reports.record import RequestRecord
from catcache.store.documents import Document
from catcache.store.health import CacheUnavailable
from catcache.store.hits import HitCounter

log = logging.getLogger("catcache.proxy")
NEIGHBOURS = 8
VERIFY_AT_MOST = 3


@dataclass
class Exchange:
    """What the pipeline knows about one request so far."""

    endpoint: str
    path: str
    body: dict
    canon: CanonicalRequest
    headers: dict[str, str]
    tenant: str | None
    stream: bool
    include_usage: bool
    control: str | None
    started: float = field(default_factory=time.perf_counter)
    category: str = ""
    policy: Category | None = None
    vector: np.ndarray | None = None
    doc_id: str = ""
    scope_key: str = ""
    similarity: float | None = None
    verdict: str | None = None

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000


@dataclass(frozen=True)
class Found:
    """What the cache tiers made of a request, before any backend is called."""

    outcome: str                                          # hit-exact, hit-semantic, miss or bypass
    doc: Document | None = None                           # the entry to serve, for a hit
    band: list[tuple[float, str]] = field(default_factory=list)  # (similarity, id) inside the IC band


class CachePipeline:
    def __init__(self, state: ProxyState):
        self.state = state
        self.hits = HitCounter(state.store, state.guard)

    async def handle(self, request: Request, endpoint: str) -> Response:
        exchange = await self._parse(request, endpoint)
        if isinstance(exchange, Response):
            return exchange
        try:
            found = await self._look_up(exchange, request.headers.get("x-catcache-category"))
        except CacheUnavailable:
            found = Found("bypass")
        except Exception:  # noqa: BLE001 - a fault of the cache must never become the client's error
            log.exception("cache lookup failed; the request passes through")
            found = Found("bypass")
        if found.doc is not None:
            return await self._serve(exchange, found.doc, found.outcome)
        if found.outcome == "bypass":
            return await self._forward(exchange, "bypass")
        if found.band:
            answer = await self._in_context(exchange, found.band)
            if answer is not None:
                return answer
        return await self._fetch(exchange)

    async def _look_up(self, exchange: Exchange, category_header: str | None) -> Found:
        """The tiers in order: rules, exact, embed, classify, semantic (+ verifier), IC band."""
        state, canon, policy = self.state, exchange.canon, self.state.policy
        if exchange.control == "no-store" or canon.n > 1 or not state.guard.healthy:
            return Found("bypass")
        traits = RequestTraits(canon.model, exchange.path, category_header, canon.query_text, canon.has_code)
        ruled = state.live.classifier.by_rules(traits)
        if ruled is not None and not policy.category(ruled.category).cacheable:
            self._classify(exchange, policy, ruled)
            return Found("bypass")
        if exchange.control != "no-cache":
            doc = await self._exact_lookup(exchange, policy)
            if doc is not None:
                return Found("hit-exact", doc)
        if canon.query_text:
            exchange.vector = await state.embedder.embed(canon.query_text)
        self._classify(exchange, policy, ruled or state.live.classifier.classify(traits, exchange.vector))
        if not exchange.policy.cacheable:
            return Found("bypass")
        if exchange.control == "no-cache" or exchange.vector is None:
            return Found("miss")
        doc, band = await self._semantic_lookup(exchange, policy)
        return Found("hit-semantic", doc) if doc is not None else Found("miss", band=band)

    # -- parse and scope ---------------------------------------------------------------------

    async def _parse(self, request: Request, endpoint: str) -> Exchange | Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            return openai_error(400, f"We could not parse the JSON body of your request: {exc}")
        try:
            canon = canonicalise(endpoint, body, None)
        except InvalidRequest as exc:
            return openai_error(400, str(exc), param=exc.param)
        headers = forwardable(request.headers, drop={"accept-encoding"})
        stream = body.get("stream") is True
        options = body.get("stream_options") or {}
        if not isinstance(options, dict):
            return openai_error(400, "'stream_options' must be an object.", param="stream_options")
        return Exchange(endpoint=endpoint, path=request.url.path, body=body, canon=canon, headers=headers,
                        tenant=tenant_of(request, self.state.policy), stream=stream,
                        include_usage=stream and bool(options.get("include_usage")),
                        control=cache_control(request.headers.get("cache-control", "")))

    def _classify(self, exchange: Exchange, policy: Policy, classification: Classification) -> None:
        exchange.category = classification.category if classification.category in policy.categories \
            else policy.classifier.default
        exchange.policy = policy.category(exchange.category)
        tenant = None if exchange.policy.shared else exchange.tenant
        exchange.doc_id = scoped(exchange.canon.functional_key, tenant)
        exchange.scope_key = scoped(exchange.canon.scope_key, tenant)

    # -- the cache tiers ---------------------------------------------------------------------

    async def _exact_lookup(self, exchange: Exchange, policy: Policy) -> Document | None:
        """The tenant's own entry, or a shared category's entry; one Redis round trip."""
        key = exchange.canon.functional_key
        candidates = [scoped(key, exchange.tenant)] + ([key] if exchange.tenant else [])
        docs = await self.state.guard.run(self.state.store.get_many(candidates))
        for doc in docs:
            if doc is None or doc.category not in policy.categories:
                continue
            category = policy.categories[doc.category]
            if not category.cacheable or (doc.doc_id == key and exchange.tenant and not category.shared):
                continue
            self._classify(exchange, policy, Classification(doc.category, 1.0, "exact"))
            return doc
        return None

    async def _semantic_lookup(self, exchange: Exchange, policy: Policy
                               ) -> tuple[Document | None, list[tuple[float, str]]]:
        """The verified neighbour to serve, else the neighbours inside the IC band.

        A paraphrase may have been classified into another category when it was stored, so every
        category's index is searched; a neighbour from another category is judged by the stricter
        of the two policies (see `_strictest`)."""
        relief = self._relief(policy) * policy.adaptive.max_threshold_step
        candidates: list[tuple[str, Neighbour, Category]] = []
        for name in self.state.index.categories():
            other = policy.categories.get(name)
            if other is None or not other.cacheable:
                continue
            rules = self._strictest(exchange.policy, other)
            floor = rules.threshold - relief
            if name == exchange.category and rules.ic:
                floor = min(floor, rules.ic.low)
            tenant = None if other.shared else exchange.tenant
            found = self.state.index.search(name, exchange.vector, scoped(exchange.canon.scope_key, tenant),
                                            NEIGHBOURS, floor)
            candidates += [(name, n, rules) for n in found]
        if not candidates:
            return None, []
        candidates.sort(key=lambda c: -c[1].similarity)
        exchange.similarity = candidates[0][1].similarity
        above = [c for c in candidates if c[1].similarity >= c[2].threshold - relief][:VERIFY_AT_MOST]
        if above:
            docs = await self.state.guard.run(self.state.store.get_many([n.entry.doc_id for _, n, _ in above]))
            for (name, neighbour, rules), doc in zip(above, docs):
                if doc is None:
                    self.state.index.remove(name, [neighbour.entry.doc_id])
                    continue
                if name != exchange.category and time.time() - doc.created > rules.ttl:
                    continue  # alive under its own category's TTL, too old for this query's
                verdict = self._verify(exchange, rules, doc, neighbour.similarity)
                if verdict is None:
                    exchange.similarity = neighbour.similarity
                    return doc, []
                exchange.verdict = exchange.verdict or verdict
        low = exchange.policy.ic.low if exchange.policy.ic else None
        band = [(n.similarity, n.entry.doc_id) for _, n, _ in candidates if low is not None and n.similarity >= low]
        return None, band[:NEIGHBOURS]

    @staticmethod
    def _strictest(mine: Category, other: Category) -> Category:
        """The rules a neighbour from category `other` must pass to answer a query of `mine`: the
        higher threshold, the shorter TTL and, where either verifies, a verifier (mine first).
        Only `mine`'s IC band applies: near misses are answered under the query's own policy."""
        if other is mine:
            return mine
        verify = mine.verify if mine.verify.enabled or not other.verify.enabled else other.verify
        return mine.model_copy(update={"threshold": max(mine.threshold, other.threshold),
                                       "ttl": min(mine.ttl, other.ttl), "verify": verify})

    def _verify(self, exchange: Exchange, rules: Category, doc: Document, similarity: float) -> str | None:
        """None to serve `doc`, else the reason it was refused."""
        settings = rules.verify
        if not settings.enabled or settings.verifier == "none":
            return None
        # On the event loop: the verifiers are pure Python of ~0.1 ms (bench/README, section 6), which
        # holds the GIL in a worker thread too, and a hop to one and back cost more than the check.
        verdict = load_verifier(settings.verifier).check(exchange.canon.query_text, doc.query, similarity,
                                                         settings.threshold)
        return None if verdict.accepted else verdict.reason

    def _relief(self, policy: Policy) -> float:
        return adaptive_relief(policy, self.state.large().in_flight)

    # -- answers -----------------------------------------------------------------------------

    async def _serve(self, exchange: Exchange, doc: Document, outcome: str) -> Response:
        self.hits.add(doc, exchange.policy.eviction)  # counted in the background, in batches
        response = dict(doc.response, id=fresh_id(exchange.endpoint))
        self._record(exchange, outcome, doc.latency_ms, response.get("usage"))
        headers = self._headers(exchange, outcome, doc.doc_id)
        if exchange.stream:
            return StreamingResponse(iterate(replay_chunks(response, exchange.endpoint, exchange.include_usage)),
                                     media_type="text/event-stream", headers=headers)
        return json_response(response, headers=headers)

    async def _in_context(self, exchange: Exchange, band: list[tuple[float, str]]) -> Response | None:
        """Answer with the small backend and the band's cached pairs as examples, when the router
        predicts a good answer, the large backend is busy enough and the small one is not full;
        None to fall through."""
        settings = exchange.policy.ic
        small = self.state.live.backends.get(settings.backend)
        if small is None or (exchange.endpoint == "completions" and not isinstance(exchange.body.get("prompt"), str)):
            return None
        if self.state.large().in_flight < settings.busy_at:
            return None
        if settings.small_full_at is not None and small.in_flight >= settings.small_full_at:
            exchange.verdict = exchange.verdict or f"ic: small backend full ({small.in_flight} in flight)"
            return None
        ids = [doc_id for _, doc_id in sorted(band, reverse=True)[:settings.k]]
        try:
            found = await self.state.guard.run(self.state.store.get_many(ids))
        except CacheUnavailable:
            return None
        examples = within_budget([doc for doc in found if doc is not None], settings.example_tokens)
        if not examples or agreement(examples) < settings.min_agreement:
            return None
        body = in_context_request(exchange.body, exchange.endpoint, examples, small.config.model)
        if settings.min_logprob is None:
            return await self._call(exchange, small, body, "ic", store=False, fall_through=True)
        return await self._confident(exchange, small, body, settings.min_logprob)

    async def _confident(self, exchange: Exchange, small: BackendClient, body: dict, floor: float) -> Response | None:
        """Ask the small backend whole, with log-probabilities; serve its answer only if it was sure."""
        small.in_flight += 1
        started = time.perf_counter()
        try:
            asked = confident_request(body, exchange.endpoint)
            upstream = await small.open("POST", exchange.path, headers=exchange.headers, content=orjson.dumps(asked),
                                        affinity=affinity_key(exchange.tenant, exchange.category, asked))
            payload = await upstream.aread()
            await upstream.aclose()
        except httpx.HTTPError as exc:
            log.warning("%s backend unreachable (%r): the request goes to the large one", small.name, exc)
            return None
        finally:
            small.in_flight -= 1
        response = json_object(payload) if upstream.status_code < 300 else None
        sureness = confidence(response) if response else None
        if sureness is None or sureness < floor:
            exchange.verdict = exchange.verdict or f"ic: small answer not sure enough ({sureness})"
            return None
        if not exchange.body.get("logprobs"):
            response["choices"] = [dict(choice, logprobs=None) for choice in response["choices"]]
        self._record(exchange, "ic", (time.perf_counter() - started) * 1000, response.get("usage"))
        headers = self._headers(exchange, "ic")
        if exchange.stream:
            return StreamingResponse(iterate(replay_chunks(response, exchange.endpoint, exchange.include_usage)),
                                     media_type="text/event-stream", headers=headers)
        return json_response(response, headers=headers)

    async def _fetch(self, exchange: Exchange) -> Response:
        """A miss: one backend call per distinct request at a time, stored on success."""
        flight = self.state.flights.leader(exchange.doc_id)
        if flight is not None:
            response = await asyncio.shield(flight)  # None if the leader failed or went away
            if response is not None:
                doc = Document(exchange.doc_id, exchange.endpoint, exchange.canon.model, exchange.category,
                               exchange.scope_key, exchange.canon.query_text, response)
                return await self._serve(exchange, doc, "hit-exact")
            return await self._call(exchange, self.state.large(), exchange.body, "miss", store=True)
        return await self._call(exchange, self.state.large(), exchange.body, "miss", store=True,
                                flight=exchange.doc_id)

    async def _forward(self, exchange: Exchange, outcome: str) -> Response:
        return await self._call(exchange, self.state.large(), exchange.body, outcome, store=False)

    async def _call(self, exchange: Exchange, backend: BackendClient, body: dict, outcome: str, *,
                    store: bool, flight: str | None = None, fall_through: bool = False) -> Response | None:
        """Send `body` to `backend`; relay its answer (streamed as it arrives) and store it if asked.

        With `fall_through` (the small IC backend), an unreachable backend or an error answer
        returns None so the request goes on to the large backend instead of failing.
        """
        if exchange.stream:
            body = dict(body, stream_options={**(body.get("stream_options") or {}), "include_usage": True})
        if backend.config.vllm is not None and exchange.tenant and "cache_salt" not in body:
            body = dict(body, cache_salt=exchange.tenant)  # vLLM keeps each tenant's KV blocks apart
        backend.in_flight += 1
        started = time.perf_counter()
        try:
            upstream = await backend.open("POST", exchange.path, headers=exchange.headers, content=orjson.dumps(body),
                                          affinity=affinity_key(exchange.tenant, exchange.category, body))
        except httpx.HTTPError as exc:
            backend.in_flight -= 1
            if fall_through:
                log.warning("%s backend unreachable (%r): the request goes to the large one", backend.name, exc)
                return None
            return self._unreachable(exchange, backend, flight, exc)
        if fall_through and upstream.status_code >= 300:
            await upstream.aclose()
            backend.in_flight -= 1
            log.warning("%s backend answered %d: the request goes to the large one", backend.name,
                        upstream.status_code)
            return None
        if upstream.status_code < 300 and exchange.stream:
            relay = self._relay(exchange, backend, upstream, started, outcome, store, flight)
            return StreamingResponse(relay, status_code=upstream.status_code, media_type="text/event-stream",
                                     headers=self._headers(exchange, outcome, exchange.doc_id if store else None))
        try:
            content = await upstream.aread()
        except httpx.HTTPError as exc:
            return self._unreachable(exchange, backend, flight, exc)
        finally:
            await upstream.aclose()
            backend.in_flight -= 1
        latency = (time.perf_counter() - started) * 1000
        ok = upstream.status_code < 300
        response = json_object(content) if ok else None
        if response is not None and store:
            await self._store(exchange, response, latency)
        self._land(flight, response)
        self._record(exchange, outcome if ok else "error", latency, response and response.get("usage"))
        headers = forwardable(upstream.headers, drop={"content-encoding"}) | self._headers(
            exchange, outcome, exchange.doc_id if store and response is not None else None)
        return Response(content, status_code=upstream.status_code, headers=headers)

    def _unreachable(self, exchange: Exchange, backend: BackendClient, flight: str | None,
                     exc: httpx.HTTPError) -> Response:
        self._land(flight, None)
        self._record(exchange, "error", None, None)
        return backend_failed(backend.name, exc)

    async def _relay(self, exchange: Exchange, backend: BackendClient, upstream: httpx.Response, started: float,
                     outcome: str, store: bool, flight: str | None) -> AsyncIterator[bytes]:
        """Pass each SSE event on as soon as it is complete, folding a copy for the cache."""
        assembler = StreamAssembler(exchange.endpoint)
        pending = b""
        try:
            async for piece in upstream.aiter_bytes():
                pending += piece.replace(b"\r\n", b"\n")
                while b"\n\n" in pending:
                    event, pending = pending.split(b"\n\n", 1)
                    if await self._fold(exchange, assembler, event + b"\n\n", started, store):
                        self._land(flight, assembler.response())
                    if self._client_wants(exchange, event):
                        yield event + b"\n\n"
        except httpx.HTTPError as exc:
            log.warning("backend stream broke off: %r", exc)
            raise  # break the client's stream off too: a clean end would pass a truncated answer as whole
        finally:
            await upstream.aclose()
            backend.in_flight -= 1
            self._land(flight, None)
            complete = assembler.complete
            self._record(exchange, outcome if complete else "error", (time.perf_counter() - started) * 1000,
                         assembler.usage)

    async def _fold(self, exchange: Exchange, assembler: StreamAssembler, event: bytes, started: float,
                    store: bool) -> bool:
        """Add one event to the copy; True when it completed a storable stream (stored by now)."""
        for payload in event_payloads(event):
            if payload == b"[DONE]":
                assembler.done = True
            elif payload:
                chunk = json_object(payload)
                if chunk is None:
                    assembler.corrupt = True  # relayed as it came, never stored
                else:
                    assembler.add(chunk)
        if not (assembler.done and assembler.complete):
            return False
        if store:
            await self._store(exchange, assembler.response(), (time.perf_counter() - started) * 1000)
        return True

    def _client_wants(self, exchange: Exchange, event: bytes) -> bool:
        """Drop the usage-only chunk that catcache asked for on the client's behalf."""
        if exchange.include_usage or event.startswith(DONE.strip()):
            return True
        for payload in event_payloads(event):
            if payload.startswith(b"{") and b'"usage"' in payload:
                chunk = json_object(payload) or {}
                if not chunk.get("choices") and chunk.get("usage"):
                    return False
        return True

    async def _store(self, exchange: Exchange, response: dict, latency_ms: float) -> None:
        """Keep a good answer; a failure here is logged and never reaches the client."""
        category, policy = exchange.policy, self.state.policy
        if category is None or not response.get("choices"):
            return
        doc = Document(exchange.doc_id, exchange.endpoint, exchange.canon.model, exchange.category,
                       exchange.scope_key, exchange.canon.query_text, response, request=exchange.canon.canonical,
                       latency_ms=latency_ms, embedding=exchange.vector,
                       tenant="" if category.shared else exchange.tenant or "")
        ttl = category.ttl * (1 + self._relief(policy) * (policy.adaptive.max_ttl_factor - 1))
        try:
            evicted = await self.state.guard.run(self.state.store.put(doc, ttl, category.eviction, category.quota))
            self.state.index.remove(exchange.category, evicted)
            if exchange.vector is not None:
                self.state.index.add(exchange.category, exchange.doc_id, exchange.scope_key, exchange.vector)
        except CacheUnavailable as exc:
            log.warning("could not store a response (%s); it was still served", exc)
        except Exception:  # noqa: BLE001 - a failed store never breaks the response it keeps
            log.exception("could not store a response; it was still served")

    def _land(self, flight: str | None, response: dict | None) -> None:
        if flight is not None:
            self.state.flights.land(flight, response)

    # -- headers and records -----------------------------------------------------------------

    def _headers(self, exchange: Exchange, outcome: str, entry: str | None = None) -> dict[str, str]:
        headers = {"x-catcache": outcome}
        if entry:
            headers["x-catcache-key"] = entry
        if exchange.category:
            headers["x-catcache-category"] = exchange.category
        if exchange.similarity is not None and outcome in ("hit-semantic", "ic", "miss"):
            headers["x-catcache-similarity"] = f"{exchange.similarity:.4f}"
        if exchange.verdict and outcome != "hit-semantic":
            headers["x-catcache-verdict"] = exchange.verdict[:200]
        return headers

    def _record(self, exchange: Exchange, outcome: str, backend_ms: float | None, usage: dict | None) -> None:
        usage = usage or {}
        small = self.state.live.backends.get(exchange.policy.ic.backend) if outcome == "ic" else None
        model = (small and small.config.model) or exchange.canon.model  # an IC answer costs the small model's price
        self.state.recorder.record(RequestRecord(
            outcome=outcome, category=exchange.category or "-", model=model, tenant=exchange.tenant,
            similarity=exchange.similarity, verdict=exchange.verdict, latency_ms=exchange.elapsed_ms(),
            backend_latency_ms=backend_ms, prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0), endpoint=exchange.endpoint))


def adaptive_relief(policy: Policy, waiting: int) -> float:
    """0..1: how far the adaptive policy relaxes thresholds and stretches TTLs, from the number of
    requests the large backend has in hand (1 at `queue_high` and beyond)."""
    if not policy.adaptive.enabled:
        return 0.0
    return min(1.0, waiting / policy.adaptive.queue_high)


def scoped(key: str, tenant: str | None) -> str:
    return hashlib.sha256(f"{tenant}\0{key}".encode()).hexdigest() if tenant else key


def tenant_of(request: Request, policy: Policy) -> str | None:
    """A hash that stands for the caller (never the key itself), or None for one shared cache."""
    if policy.tenancy.by == "none":
        return None
    if policy.tenancy.by == "header":
        value = request.headers.get(policy.tenancy.header)
    else:
        value = request.headers.get("authorization", "").removeprefix("Bearer ").strip() or None
    return hashlib.sha256(value.encode()).hexdigest()[:32] if value else None


def cache_control(header: str) -> str | None:
    directives = {part.strip().lower() for part in header.split(",")}
    if "no-store" in directives:
        return "no-store"
    return "no-cache" if "no-cache" in directives else None


def fresh_id(endpoint: str) -> str:
    return ("chatcmpl-" if endpoint == "chat" else "cmpl-") + uuid.uuid4().hex[:24]


def json_object(content: bytes) -> dict | None:
    """A JSON object, or None for anything else a backend might send."""
    try:
        value = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


async def iterate(chunks) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk
