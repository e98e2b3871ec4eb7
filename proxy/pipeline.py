"""One cacheable request, start to finish:

parse -> look up (rules, exact, embed, classify, semantic + verifier, IC band) ->
    (where the policy lets, the large backend is asked as soon as the exact tier has missed, and
     a hit found before its first byte closes that call: proxy/speculation.py)
    a hit: served from the cache;
    a bypass: the large backend, nothing stored;
    a near miss in the IC band: the small backend, when it is likely good and the large one busy;
    else: the large backend, one call per distinct request at a time (single flight), stored.

Any cache failure turns the request into a plain pass-through; the cache never turns a good
answer into an error.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from fastapi import Request
from fastapi.responses import Response

from catcache.proxy import outcomes
from catcache.proxy.checking import check_beside
from catcache.proxy.exchange import Exchange, Found, parse
from catcache.proxy.forwarding import forward, fresh_id, pass_through, reply
from catcache.proxy.incontext import in_context
from catcache.proxy.learner import Check, answer_text
from catcache.proxy.lookup import Tiers, look_up
from catcache.proxy.speculation import RaceClock, Speculation
from catcache.proxy.state import ProxyState
from catcache.proxy.storing import Keep
from catcache.reports.record import Outcome
from catcache.store.documents import Document
from catcache.store.hits import HitCounter
from catcache.verify.question import answer_kind


# Requests larger than this pass through uncached, byte for byte, without being parsed: parsing
# and hashing megabytes costs the CPU every other client shares (JSON parsing holds the GIL, even in
# a thread), and a prompt of megabytes is rarely asked twice. Bounded by configuration, like memory.
UNCACHED_BODY_BYTES = 1024 * 1024


class CachePipeline:
    def __init__(self, state: ProxyState):
        self.state = state
        self.hits = HitCounter(state.store, state.guard)
        self.clock = RaceClock()  # whether speculation pays (proxy/speculation.py)

    async def handle(self, request: Request, endpoint: str) -> Response:
        raw = await request.body()
        if len(raw) > UNCACHED_BODY_BYTES:
            return await pass_through(self.state, request, Outcome.BYPASS)
        exchange = await parse(request, endpoint, self.state.policy, raw)
        if isinstance(exchange, Response):
            return exchange
        speculation = Speculation.of(self.state, exchange, self.clock)
        lookup = look_up(Tiers.of(self.state), exchange, self.state.large().in_flight,
                         speculation and speculation.start)
        found = await (speculation.race(lookup) if speculation else lookup)
        if isinstance(found, Response):
            return found  # the speculative call's answer began first
        exchange.learn(found)
        for category, doc_id in found.stale:
            self.state.index.remove(category, [doc_id])
        learner = self.state.learner
        learner.requests += 1
        if found.best is not None:
            similarity = found.best[0]
            learner.ask(found.category, found.cell, similarity)
            if found.doc is None:  # a near miss: its fresh answer will say whether the neighbour's was right
                exchange.check = Check.of(found, "near")
            elif found.outcome == Outcome.HIT_SEMANTIC:
                learner.vouched[found.category] += found.vouched
                found = self.check(exchange, found, similarity)
        elif found.outcome == Outcome.HIT_EXACT and found.doc is not None and found.doc.query == exchange.canon.query_text:
            self.check_repeat(exchange, found.doc)  # the same words (not code renamed, which the exact tier also joins)
        if speculation is not None and speculation.sent:
            answer = await speculation.settle(found)
            if answer is not None:
                return answer
        if found.doc is not None:
            return self.serve(exchange, found.doc, found.outcome)
        if found.outcome == Outcome.BYPASS:
            return await forward(self.state, exchange, Outcome.BYPASS)
        if found.band:
            answer = await in_context(self.state, exchange, found.band)
            if answer is not None:
                return answer
        return await self.fetch(exchange, speculation.joined if speculation is not None else None)

    def check(self, exchange: Exchange, found: Found, similarity: float) -> Found:
        """A would-be hit, perhaps checked: served with the backend asked beside it (shadow), or
        answered by the backend instead (a miss for this client), the fresh answer judged
        against the neighbour's either way."""
        room = self.state.large().in_flight < self.state.policy.speculation.max_in_flight
        how = self.state.learner.explore(found.category, room, found.vouched)
        vouched = "vouched" if found.vouched else None  # its checks are kept apart (verify/learning.py)
        if how == "shadow":
            check_beside(self.state, exchange, Check.of(found, vouched or "shadow"))
        elif how == "miss":
            exchange.check = Check.of(found, vouched or "explore")
            found = replace(found, outcome=Outcome.MISS, doc=None, band=[])
            exchange.learn(found)
            exchange.verdict = f"explored: a would-be hit at {similarity:.4f}, answered by the backend to check it"
        return found

    def check_repeat(self, exchange: Exchange, doc: Document) -> None:
        """An exact hit, now and then asked of the large backend again beside it: two answers to the
        very same request that the judge calls different are its noise, not a false hit."""
        room = self.state.large().in_flight < self.state.policy.speculation.max_in_flight
        if self.state.learner.repeat(exchange.category, room):
            cell = answer_kind(exchange.canon.query_text)
            check_beside(self.state, exchange, Check(exchange.category, cell, 1.0, answer_text(doc.response), "repeat"))

    def serve(self, exchange: Exchange, doc: Document, outcome: Outcome) -> Response:
        """A hit: the cached answer under a fresh id, counted in the background."""
        self.hits.add(doc, exchange.rules.eviction)
        self.state.learner.serve(exchange.category, exchange.found.cell,
                                 exchange.similarity if outcome == Outcome.HIT_SEMANTIC else None,
                                 exchange.found.vouched and outcome == Outcome.HIT_SEMANTIC)
        response = dict(doc.response, id=fresh_id(exchange.endpoint))
        outcomes.record(self.state, exchange, outcome, doc.latency_ms, response.get("usage"))
        return reply(exchange, response, outcomes.headers(exchange, outcome, doc.doc_id))

    async def fetch(self, exchange: Exchange, joined: asyncio.Future | None = None) -> Response:
        """A miss: the large backend's answer, stored; a request already being fetched waits for
        that answer instead (and calls the backend itself only if that call failed). `joined`: the
        flight the request found when its exact tier missed (proxy/speculation.py), which may
        have ended since, its answer not yet stored."""
        flight = joined if joined is not None else self.state.flights.leader(exchange.doc_id)
        if flight is None:
            return await forward(self.state, exchange, Outcome.MISS, Keep(self.state, exchange, exchange.doc_id))
        response = await asyncio.shield(flight)  # None if the leader failed or went away
        if response is None:
            return await forward(self.state, exchange, Outcome.MISS, Keep(self.state, exchange))
        doc = Document(exchange.doc_id, exchange.endpoint, exchange.canon.model, exchange.category,
                       exchange.scope_key, exchange.canon.query_text, response)
        return self.serve(exchange, doc, Outcome.HIT_EXACT)
