"""Keeping the large backend's answer to a miss: stored in Redis and the index, and handed to the
requests waiting on the same flight (proxy/singleflight.py)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import httpx

from catcache.proxy.exchange import Exchange
from catcache.proxy.lookup import adaptive_relief
from catcache.proxy.state import ProxyState
from catcache.store.documents import Document
from catcache.store.health import CacheUnavailable

log = logging.getLogger("catcache.proxy")


@dataclass
class Keep:
    """Where a miss's complete answer goes; `flight` is the single-flight key it leads, if any."""

    state: ProxyState
    exchange: Exchange
    flight: str | None = None

    async def store(self, response: dict, latency_ms: float, backend_headers: httpx.Headers | None = None) -> bool:
        """Store `response` if it is a complete answer the backend lets us keep, and hand it to the
        requests waiting on this flight; True once it is stored. One that is not storable is
        handed to no one: the waiters ask the backend themselves. A stored answer to a checked
        request is judged against the neighbour's cached one (proxy/learner.py)."""
        if not storable(response, backend_headers, self.state.policy.finish_reasons):
            self.land(None)
            return False
        self.land(response)
        stored = await store(self.state, self.exchange, response, latency_ms)
        check = self.exchange.check
        if check is not None:
            self.state.learner.judge_later(check, response, self.exchange.doc_id if stored else "")
        return stored

    def land(self, response: dict | None, held_until: asyncio.Future | None = None) -> None:
        """Hand the answer (None: the call failed) to the requests waiting on this flight, and to
        those that come until `held_until` is done (SingleFlight.land)."""
        if self.flight is not None:
            self.state.flights.land(self.flight, response, held_until)


def storable(response: dict, backend_headers: httpx.Headers | None, finish_reasons: list[str]) -> bool:
    """Only a complete, successful answer is kept: choices that all ended for a reason the policy
    lists (by default `stop` and `tool_calls`, not `length` or `content_filter`), no top-level
    `error` (some servers answer 200 with one), and no `Cache-Control: no-store` or `private`
    from the backend."""
    choices = response.get("choices")
    if "error" in response or not isinstance(choices, list) or not choices:
        return False
    if not all(isinstance(c, dict) and c.get("finish_reason") in finish_reasons for c in choices):
        return False
    if backend_headers is not None:
        directives = {d.strip().lower().split("=")[0] for d in
                      backend_headers.get("cache-control", "").replace(";", ",").split(",")}
        if directives & {"no-store", "private"}:
            return False
    return True


async def store(state: ProxyState, exchange: Exchange, response: dict, latency_ms: float) -> bool:
    """Keep a good answer; True once stored. A failure here is logged and never reaches the client."""
    rules, policy = exchange.rules, state.policy
    if rules is None or not response.get("choices"):
        return False
    doc = Document(exchange.doc_id, exchange.endpoint, exchange.canon.model, exchange.category,
                   exchange.scope_key, exchange.canon.query_text, response, request=exchange.canon.canonical,
                   latency_ms=latency_ms, embedding=exchange.vector,
                   tenant="" if rules.shared else exchange.tenant or "")
    relief = adaptive_relief(policy, state.large().in_flight)
    ttl = rules.ttl * (1 + relief * (policy.adaptive.max_ttl_factor - 1))
    try:
        evicted = await state.guard.run(state.store.put(doc, ttl, rules.eviction, rules.quota))
        state.index.remove(exchange.category, evicted)
        if exchange.vector is not None:
            state.index.add(exchange.category, exchange.doc_id, exchange.scope_key, exchange.vector)
    except CacheUnavailable as exc:
        log.warning("could not store a response (%s); it was still served", exc)
        return False
    except Exception:  # noqa: BLE001 - a failed store never breaks the response it keeps
        log.exception("could not store a response; it was still served")
        return False
    return True
