"""Shadow checks: a would-be hit served from the cache is also asked of the large backend, in the
background, and the two answers are judged (proxy/learner.py).

The client gets its hit at once; what the check costs is one extra backend call, which the
learner keeps within `learning.exploration.budget` of the requests and sends only while the
backend has room. The other way to check, `mode: miss`, costs no call but turns the hit into a
miss for that client: on a stream of a few thousand requests that lost more hits than learning
won back (bench/README.md, section 14).
"""

from __future__ import annotations

import logging

import httpx

from catcache.proxy.exchange import Exchange
from catcache.proxy.forwarding import json_object, send
from catcache.proxy.learner import Check
from catcache.proxy.state import ProxyState
from catcache.proxy.storing import storable

log = logging.getLogger("catcache.learning")


def check_beside(state: ProxyState, exchange: Exchange, check: Check) -> None:
    """Ask the large backend what it answers to `exchange`, and judge that against `check`."""
    state.learner.later(_ask_and_judge(state, exchange, check))


async def _ask_and_judge(state: ProxyState, exchange: Exchange, check: Check) -> None:
    backend = state.large()
    body = {k: v for k, v in exchange.body.items() if k not in ("stream", "stream_options")}
    try:
        upstream = await send(exchange, backend, body)
        try:
            content = await upstream.aread()
        finally:
            await upstream.aclose()
    except httpx.HTTPError as exc:
        log.info("a shadow check of %s could not reach the backend: %r", check.category, exc)
        return
    response = json_object(content) if upstream.status_code < 300 else None
    if response is not None and storable(response, upstream.headers, state.policy.finish_reasons):
        state.learner.judge_later(check, response)
