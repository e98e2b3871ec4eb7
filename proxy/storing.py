"""Keeping the large backend's answer to a miss: stored in Redis and the index, and handed to the
requests waiting on the same flight (proxy/singleflight.py)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

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

    async def store(self, response: dict, latency_ms: float) -> None:
        await store(self.state, self.exchange, response, latency_ms)

    def land(self, response: dict | None) -> None:
        """Hand the answer (None: the call failed) to the requests waiting on this flight."""
        if self.flight is not None:
            self.state.flights.land(self.flight, response)


async def store(state: ProxyState, exchange: Exchange, response: dict, latency_ms: float) -> None:
    """Keep a good answer; a failure here is logged and never reaches the client."""
    rules, policy = exchange.rules, state.policy
    if rules is None or not response.get("choices"):
        return
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
    except Exception:  # noqa: BLE001 - a failed store never breaks the response it keeps
        log.exception("could not store a response; it was still served")
