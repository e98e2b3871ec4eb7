"""Calls to the backends and their answers relayed to the client.

A backend's `open` counts the request in its `in_flight` until the answer's body is closed
(backends/client.py), so every path here just closes what it opened. A streamed answer is passed
on event by event while a copy is folded for the cache; an answer from the cache or a whole one
from the small backend is replayed as a stream or sent as JSON, as the client asked.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterable

import httpx
import orjson
from fastapi.responses import Response, StreamingResponse

from catcache.backends.client import BackendClient, forwardable
from catcache.backends.replicas import affinity_key
from catcache.proxy import outcomes
from catcache.proxy.exchange import Exchange
from catcache.proxy.sse import DONE, StreamAssembler, event_payloads, replay_chunks
from catcache.proxy.state import ProxyState
from catcache.proxy.storing import Keep
from catcache.reports.record import Outcome
from catcache.responses import backend_failed, json_response

log = logging.getLogger("catcache.proxy")


async def send(exchange: Exchange, backend: BackendClient, body: dict) -> httpx.Response:
    """POST `body` to `backend` on the client's path; the caller reads and closes the answer."""
    return await backend.open("POST", exchange.path, headers=exchange.headers, content=orjson.dumps(body),
                              affinity=affinity_key(exchange.tenant, exchange.category, body))


async def send_or_fall_through(exchange: Exchange, backend: BackendClient, body: dict) -> httpx.Response | None:
    """`send` to the small IC backend: None (logged) when it cannot be reached or answers an error,
    so that the request goes on to the large backend instead of failing."""
    try:
        upstream = await send(exchange, backend, body)
    except httpx.HTTPError as exc:
        log.warning("%s backend unreachable (%r): the request goes to the large one", backend.name, exc)
        return None
    if upstream.status_code >= 300:
        await upstream.aclose()
        log.warning("%s backend answered %d: the request goes to the large one", backend.name, upstream.status_code)
        return None
    return upstream


def relayable(exchange: Exchange, backend: BackendClient, body: dict) -> dict:
    """The body as sent for an answer relayed to the client: a stream always carries its usage (for
    the record; dropped again unless the client asked), and vLLM keeps each tenant's KV blocks apart."""
    if exchange.stream:
        body = dict(body, stream_options={**(body.get("stream_options") or {}), "include_usage": True})
    if backend.config.vllm is not None and exchange.tenant and "cache_salt" not in body:
        body = dict(body, cache_salt=exchange.tenant)
    return body


async def forward(state: ProxyState, exchange: Exchange, outcome: Outcome, keep: Keep | None = None) -> Response:
    """Ask the large backend and relay its answer; with `keep`, a complete answer is kept."""
    backend = state.large()
    started = time.perf_counter()
    try:
        upstream = await send(exchange, backend, relayable(exchange, backend, exchange.body))
    except httpx.HTTPError as exc:
        return failed(state, exchange, backend, keep, exc)
    return await relay(state, exchange, backend, upstream, started, outcome, keep)


async def relay(state: ProxyState, exchange: Exchange, backend: BackendClient, upstream: httpx.Response,
                started: float, outcome: Outcome, keep: Keep | None,
                pieces: AsyncIterator[bytes] | None = None) -> Response:
    """The backend's answer, streamed as it arrives or read whole, recorded and kept if `keep`;
    `pieces`: the stream's body when a part of it was already read (proxy/speculation.py)."""
    if upstream.status_code < 300 and exchange.stream:
        events = _relay_events(state, exchange, upstream, started, outcome, keep, pieces or upstream.aiter_bytes())
        return StreamingResponse(events, status_code=upstream.status_code, media_type="text/event-stream",
                                 headers=outcomes.headers(exchange, outcome, exchange.doc_id if keep else None))
    try:
        content = await upstream.aread()
    except httpx.HTTPError as exc:
        return failed(state, exchange, backend, keep, exc)
    finally:
        await upstream.aclose()
    latency = (time.perf_counter() - started) * 1000
    ok = upstream.status_code < 300
    response = json_object(content) if ok else None
    if keep is not None:
        if response is not None:
            await keep.store(response, latency)
        keep.land(response)
    outcomes.record(state, exchange, outcome if ok else Outcome.ERROR, latency, response and response.get("usage"))
    headers = forwardable(upstream.headers, drop={"content-encoding"}) | outcomes.headers(
        exchange, outcome, exchange.doc_id if keep and response is not None else None)
    return Response(content, status_code=upstream.status_code, headers=headers)


def failed(state: ProxyState, exchange: Exchange, backend: BackendClient, keep: Keep | None,
           exc: httpx.HTTPError) -> Response:
    """The backend could not be reached or broke off before its answer was whole."""
    if keep is not None:
        keep.land(None)
    outcomes.record(state, exchange, Outcome.ERROR, None, None)
    return backend_failed(backend.name, exc)


async def _relay_events(state: ProxyState, exchange: Exchange, upstream: httpx.Response, started: float,
                        outcome: Outcome, keep: Keep | None, pieces: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Pass each SSE event on as soon as it is complete, folding a copy for the cache."""
    assembler = StreamAssembler(exchange.endpoint)
    pending = b""
    try:
        async for piece in pieces:
            pending += piece.replace(b"\r\n", b"\n")
            while b"\n\n" in pending:
                event, pending = pending.split(b"\n\n", 1)
                if _fold(assembler, event) and keep is not None:
                    await keep.store(assembler.response(), (time.perf_counter() - started) * 1000)
                    keep.land(assembler.response())
                if _client_wants(exchange, event):
                    yield event + b"\n\n"
    except httpx.HTTPError as exc:
        log.warning("backend stream broke off: %r", exc)
        raise  # break the client's stream off too: a clean end would pass a truncated answer as whole
    finally:
        await upstream.aclose()
        if keep is not None:
            keep.land(None)
        outcomes.record(state, exchange, outcome if assembler.complete else Outcome.ERROR,
                        (time.perf_counter() - started) * 1000, assembler.usage)


def _fold(assembler: StreamAssembler, event: bytes) -> bool:
    """Add one event to the copy kept for the cache; True when it completed the answer."""
    for payload in event_payloads(event + b"\n\n"):
        if payload == b"[DONE]":
            assembler.done = True
        elif payload:
            chunk = json_object(payload)
            if chunk is None:
                assembler.corrupt = True  # relayed as it came, never stored
            else:
                assembler.add(chunk)
    return assembler.done and assembler.complete


def _client_wants(exchange: Exchange, event: bytes) -> bool:
    """Drop the usage-only chunk that catcache asked for on the client's behalf."""
    if exchange.include_usage or event.startswith(DONE.strip()):
        return True
    for payload in event_payloads(event):
        if payload.startswith(b"{") and b'"usage"' in payload:
            chunk = json_object(payload) or {}
            if not chunk.get("choices") and chunk.get("usage"):
                return False
    return True


def reply(exchange: Exchange, response: dict, headers: dict[str, str]) -> Response:
    """A whole answer (from the cache, or the small backend) as the client asked: SSE or JSON."""
    if exchange.stream:
        return StreamingResponse(_iterate(replay_chunks(response, exchange.endpoint, exchange.include_usage)),
                                 media_type="text/event-stream", headers=headers)
    return json_response(response, headers=headers)


def fresh_id(endpoint: str) -> str:
    return ("chatcmpl-" if endpoint == "chat" else "cmpl-") + uuid.uuid4().hex[:24]


def json_object(content: bytes) -> dict | None:
    """A JSON object, or None for anything else a backend might send."""
    try:
        value = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


async def _iterate(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk
