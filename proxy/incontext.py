"""The IC route: a near miss answered by the small backend, with the cached pairs of its IC band
as examples, when that is likely good and the large backend is busy (backends/ic.py)."""

from __future__ import annotations

import logging
import time

import httpx
from fastapi.responses import Response

from catcache.backends.client import BackendClient
from catcache.backends.ic import agreement, confidence, confident_request, in_context_request, within_budget
from catcache.proxy import outcomes
from catcache.proxy.exchange import Band, Exchange
from catcache.proxy.forwarding import json_object, relay, relayable, reply, send_or_fall_through
from catcache.proxy.state import ProxyState
from catcache.reports.record import Outcome
from catcache.store.health import CacheUnavailable

log = logging.getLogger("catcache.proxy")


async def in_context(state: ProxyState, exchange: Exchange, band: Band) -> Response | None:
    """Answer with the small backend and the band's cached pairs as examples, when the router
    predicts a good answer, the large backend is busy enough and the small one is not full;
    None to fall through to the large backend."""
    ic = exchange.rules.ic
    small = state.live.backends.get(ic.backend)
    if small is None or (exchange.endpoint == "completions" and not isinstance(exchange.body.get("prompt"), str)):
        return None
    if state.large().in_flight < ic.busy_at:
        return None
    if ic.small_full_at is not None and small.in_flight >= ic.small_full_at:
        exchange.verdict = exchange.verdict or f"ic: small backend full ({small.in_flight} in flight)"
        return None
    ids = [doc_id for _, doc_id in sorted(band, reverse=True)[:ic.k]]
    try:
        found = await state.guard.run(state.store.get_many(ids))
    except CacheUnavailable:
        return None
    examples = within_budget([doc for doc in found if doc is not None], ic.example_tokens)
    if not examples or agreement(examples) < ic.min_agreement:
        return None
    body = in_context_request(exchange.body, exchange.endpoint, examples, small.config.model)
    if ic.min_logprob is None:
        started = time.perf_counter()
        upstream = await send_or_fall_through(exchange, small, relayable(exchange, small, body))
        if upstream is None:
            return None
        return await relay(state, exchange, small, upstream, started, Outcome.IC, keep=None)
    return await confident(state, exchange, small, body, ic.min_logprob)


async def confident(state: ProxyState, exchange: Exchange, small: BackendClient, body: dict,
                    floor: float) -> Response | None:
    """Ask the small backend whole, with log-probabilities; serve its answer only if it was sure."""
    started = time.perf_counter()
    upstream = await send_or_fall_through(exchange, small, confident_request(body, exchange.endpoint))
    if upstream is None:
        return None
    try:
        payload = await upstream.aread()
    except httpx.HTTPError as exc:
        log.warning("%s backend unreachable (%r): the request goes to the large one", small.name, exc)
        return None
    finally:
        await upstream.aclose()
    response = json_object(payload)
    sureness = confidence(response) if response else None
    if sureness is None or sureness < floor:
        exchange.verdict = exchange.verdict or f"ic: small answer not sure enough ({sureness})"
        return None
    if not exchange.body.get("logprobs"):
        response["choices"] = [dict(choice, logprobs=None) for choice in response["choices"]]
    outcomes.record(state, exchange, Outcome.IC, (time.perf_counter() - started) * 1000, response.get("usage"))
    return reply(exchange, response, outcomes.headers(exchange, Outcome.IC))
