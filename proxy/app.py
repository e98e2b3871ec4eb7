"""The HTTP face of catcache: OpenAI's routes, pass-through for the rest of /v1, and admin."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from catcache.backends.local import LocalModel
from catcache.index.embedder import Embedder
from catcache.index.semantic import SemanticIndex
from catcache.policy.loader import PolicyError, load_policy
from catcache.proxy.admin import router as admin_router
from catcache.proxy.admin_auth import AdminAuth
from catcache.proxy.feedback import router as feedback_router
from catcache.proxy.learner import Learner, ask_backend
from catcache.proxy.limits import DEFAULT_MAX_BODY_BYTES, BodyLimit
from catcache.proxy.forwarding import pass_through
from catcache.proxy.pipeline import CachePipeline
from catcache.proxy.state import ProxyState, build_live
from catcache.reports.recorder import Recorder
from catcache.reports.routes import router as reports_router
from catcache.responses import json_response, openai_error
from catcache.store.connect import connect
from catcache.store.documents import DocumentStore
from catcache.store.embedded import EmbeddedRedis
from catcache.store.health import CacheUnavailable, RedisGuard
from catcache.store.learned import LearnedState

log = logging.getLogger("catcache")
SWEEP_EVERY_S = 60.0
SNAPSHOT_EVERY_S = 300.0
SHUTDOWN_GRACE_S = 20.0  # a stuck backend or Redis never holds a shutdown for good
POLICY_POLL_S = 1.0


@dataclass(frozen=True)
class Settings:
    backend: str | None
    policies: Path | None
    redis_url: str
    embedded: EmbeddedRedis | None = None  # stopped when the app shuts down (SIGTERM and SIGINT too)
    backend_timeout: float | None = None  # seconds without a byte from the large backend; None: the policy's
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    admin_token: str | None = None  # required by /admin/*, /stats and /metrics when set
    snapshots: Path | None = None  # where the semantic indexes are saved, for a fast restart
    local: LocalModel | None = None  # the bundled model, stopped like the embedded Redis
    local_url: str | None = None


def create_app(settings: Settings) -> FastAPI:
    app = FastAPI(title="catcache", lifespan=lambda app: lifespan(app, settings), docs_url=None, redoc_url=None)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(AdminAuth, token=settings.admin_token)  # added last: runs first
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(ClientDisconnect, client_went_away)
    app.add_exception_handler(Exception, internal_error)

    @app.get("/healthz")
    async def healthz(request: Request) -> Response:
        state: ProxyState = request.app.state.proxy
        return json_response({"status": "ok", "redis": "up" if state.guard.healthy else "down",
                              "index": state.index.sizes(), "policy_error": state.last_reload_error,
                              "redis_restarts": settings.embedded.restarts if settings.embedded else None})

    @app.post("/admin/reload")
    async def reload(request: Request) -> Response:
        try:
            await request.app.state.proxy.reload()
        except PolicyError as exc:
            return openai_error(400, f"policy refused, the old policy stays live:\n{exc}", code="invalid_policy")
        return json_response({"status": "reloaded"})

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await request.app.state.pipeline.handle(request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await request.app.state.pipeline.handle(request, "completions")

    app.include_router(feedback_router)  # before the pass-through, which takes the rest of /v1

    @app.api_route("/v1/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
    async def passthrough(request: Request) -> Response:
        return await pass_through(request.app.state.proxy, request)

    app.include_router(reports_router)
    app.include_router(admin_router)
    return app


async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
    """Routing's own errors (an unknown path, a method a route does not take) in OpenAI's shape."""
    code = {404: "unknown_path", 405: "method_not_allowed"}.get(exc.status_code)
    response = openai_error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}", code=code)
    response.headers.update(exc.headers or {})
    return response


async def client_went_away(request: Request, exc: ClientDisconnect) -> Response:
    """The client hung up before its request was read: nobody to answer, nothing to log loudly."""
    log.debug("client disconnected before its request was read: %s %s", request.method, request.url.path)
    return Response(status_code=499)  # never sent: uvicorn drops what goes to a closed connection


async def internal_error(request: Request, exc: Exception) -> Response:
    """A bug's 500 is still JSON in OpenAI's shape; the details (which may quote a request) stay in
    the log, where Starlette writes the traceback."""
    return openai_error(500, "catcache failed on this request; the details are in its log.",
                        type="server_error", code="internal_error")


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI, settings: Settings) -> AsyncIterator[None]:
    policy = load_policy(settings.policies)
    embedder = await asyncio.to_thread(Embedder, policy.embedding_model)
    redis = connect(settings.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
    store = DocumentStore(redis, origin=uuid.uuid4().hex)
    state = ProxyState(
        live=await asyncio.to_thread(build_live, policy, embedder, settings.backend, None, settings.local_url,
                                     settings.backend_timeout),
        policy_path=settings.policies, backend_override=settings.backend,
        timeout_override=settings.backend_timeout, embedder=embedder, store=store,
        guard=RedisGuard(redis), index=SemanticIndex(store, embedder.dim, model=embedder.name),
        recorder=Recorder(redis, lambda: state.policy), local_url=settings.local_url,
        learner=Learner(LearnedState(redis), lambda: state.policy, lambda texts: embed_all(embedder, texts),
                        lambda prompt: ask_backend(state.live.backends[state.policy.learning.judge.backend],
                                                   prompt),
                        remember=lambda doc_id, similarity, same: state.guard.run(
                            store.note_judgement(doc_id, similarity, same))))
    await state.index.start(settings.snapshots)
    if state.learner.enabled:
        with contextlib.suppress(Exception):  # Redis not up yet: the first period's sync tries again
            await state.learner.sync()
    app.state.proxy = state
    app.state.pipeline = CachePipeline(state)
    tasks = [asyncio.create_task(every(SWEEP_EVERY_S, lambda: state.guard.run(state.index.sweep(), timeout=30))),
             asyncio.create_task(follow_replicas(state)), asyncio.create_task(state.learner.run())]
    if settings.policies is not None:
        tasks.append(asyncio.create_task(watch_policy(state, settings.policies)))
    if settings.snapshots is not None:
        tasks.append(asyncio.create_task(every(SNAPSHOT_EVERY_S, lambda: state.index.save_snapshot(settings.snapshots))))
    log.info("catcache ready: backend %s, redis %s", state.large().base_url, settings.redis_url)
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        try:
            await asyncio.wait_for(settle(app, state, settings), SHUTDOWN_GRACE_S)
        except TimeoutError:
            log.warning("shutdown: what was pending did not settle within %.0f s; closing anyway", SHUTDOWN_GRACE_S)
        state.guard.close()
        embedder.close()
        await redis.aclose()
        if settings.embedded is not None:
            settings.embedded.stop()
        if settings.local is not None:
            settings.local.stop()


async def settle(app: FastAPI, state: ProxyState, settings: Settings) -> None:
    """What a clean shutdown owes: the snapshot, the counters and judgements in hand, the backends'
    connections closed."""
    if settings.snapshots is not None:
        await state.index.save_snapshot(settings.snapshots)
    await app.state.pipeline.hits.close()
    await state.recorder.close()
    await state.learner.settled()
    with contextlib.suppress(Exception):  # what this proxy counted last goes to Redis if it can
        await state.learner.sync()
    for client in state.live.backends.values():
        await client.aclose()


async def embed_all(embedder: Embedder, texts: list[str]) -> np.ndarray:
    """Several texts through the request path's micro-batching (the learner's judge embeds two answers)."""
    return np.stack(await asyncio.gather(*(embedder.embed(text) for text in texts)))


async def every(seconds: float, job: Callable[[], Awaitable[object]]) -> None:
    while True:
        await asyncio.sleep(seconds)
        with contextlib.suppress(CacheUnavailable):
            await job()


async def follow_replicas(state: ProxyState) -> None:
    """Learn of entries other proxies add or evict, through the Redis event stream."""
    while True:
        try:
            await state.guard.run(state.index.follow(state.index.position), timeout=5.0)
        except CacheUnavailable:
            await asyncio.sleep(1.0)


async def watch_policy(state: ProxyState, path: Path) -> None:
    """Reload the policy file when it changes; a bad file is logged and the old policy kept."""
    seen = _mtime(path)
    while True:
        await asyncio.sleep(POLICY_POLL_S)
        current = _mtime(path)
        if current == seen:
            continue
        seen = current
        with contextlib.suppress(PolicyError):
            await state.reload()


def _mtime(path: Path) -> tuple[float, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime, stat.st_size
