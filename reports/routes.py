"""GET /metrics (Prometheus) and GET /stats (JSON totals from Redis, across proxies and restarts)."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from catcache.backends.client import BackendClient
from catcache.reports.learned import LearningSnapshot
from catcache.reports.metrics import Snapshot
from catcache.reports.stats import Window
from catcache.responses import json_response, openai_error
from catcache.store.health import CacheUnavailable

PROBE_TIMEOUT_S = 2.0
STATS_TIMEOUT_S = 5.0

router = APIRouter()


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    state = request.app.state.proxy
    clients = list(state.live.backends.items())
    up = await asyncio.gather(*(answers(client) for _, client in clients))
    snapshot = Snapshot(state.index.sizes(), state.guard.healthy,
                        [(name, ok, client.in_flight) for (name, client), ok in zip(clients, up)])
    learner = state.learner
    learning = LearningSnapshot(learner.summary() if learner.enabled else {}, learner.explored, learner.judged,
                                learner.shadowed, learner.vouched)
    return Response(generate_latest(state.recorder.registry) + generate_latest(snapshot) + generate_latest(learning),
                    media_type=CONTENT_TYPE_LATEST)


@router.get("/stats")
async def stats(request: Request, since: str = "1h") -> Response:
    """Per category and outcome, the totals of the last `since` (e.g. 15m, 24h, 7d)."""
    state = request.app.state.proxy
    try:
        window = await state.guard.run(Window.load(state.store.redis, since), timeout=STATS_TIMEOUT_S)
    except ValueError as exc:
        return openai_error(400, f"since: {exc}", code="invalid_since")
    except CacheUnavailable as exc:
        return openai_error(503, f"the counters live in redis, which is unavailable: {exc}", code="redis_down")
    learning = {"learning": state.learner.summary()} if state.learner.enabled else {}
    return json_response({"since": since, **window.summary(), **learning})


async def answers(client: BackendClient) -> bool:
    """Whether the backend answers GET /models at all (an auth error still means it is up)."""
    try:
        response = await asyncio.wait_for(client.open("GET", "/v1/models", headers={}, content=b"", load=False),
                                          PROBE_TIMEOUT_S)
    except (httpx.HTTPError, OSError, asyncio.TimeoutError):
        return False
    await response.aclose()
    return response.status_code < 500
