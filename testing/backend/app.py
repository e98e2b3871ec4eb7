"""The fake backend's ASGI app: OpenAI's chat, completions, embeddings and models routes, an echo
of anything else under /v1, call counts under /stats, and failures on request headers."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from . import answers as a
from .state import DEFAULT_MODELS, BackendState
from .stream import generate, stream_response

ANY_METHOD = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def create_app(
    think_ms: float = 0, tokens_per_s: float = 0, models: Sequence[str] = DEFAULT_MODELS,
    prefix_ms: float = 0, prefix_slots: int = 0, slots: int = 0, replies: Mapping[str, str] | None = None,
    groups: Mapping[str, str] | None = None,
) -> FastAPI:
    """The app; its `state.backend` is the BackendState that counts calls and numbers answers."""
    app = FastAPI(title="catcache test backend", openapi_url=None)
    app.state.backend = BackendState(think_ms, tokens_per_s, models, prefix_ms, prefix_slots, slots, replies, groups)
    app.add_middleware(CountAndFail, state=app.state.backend)
    app.add_exception_handler(BadRequest, lambda request, exc: error(400, str(exc)))
    app.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"])
    app.add_api_route("/v1/completions", completions, methods=["POST"])
    app.add_api_route("/v1/embeddings", embeddings, methods=["POST"])
    app.add_api_route("/v1/models", list_models, methods=["GET"])
    app.add_api_route("/v1/{rest:path}", echo, methods=ANY_METHOD)
    app.add_api_route("/stats", stats, methods=["GET"])
    app.add_api_route("/stats/prefix-cache", prefix_cache, methods=["GET"])
    return app


def _state(request: Request) -> BackendState:
    return request.app.state.backend


def _envelope(kind: str, number: int, body: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"{kind}-{number}", "created": int(time.time()), "model": body.get("model", "")}


async def chat_completions(request: Request) -> Response:
    state = _state(request)
    body = await json_body(request)
    number = state.next_answer()
    messages = body.get("messages") or []
    await asyncio.sleep(state.prefill_s(messages))
    question = a.last_user_text(messages)
    tools = body.get("tools") or []
    tool = tools[0] if tools and "use tool" in question else None
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    answers = [a.chat_answer(i, number, question, tool, limit, state.replies.get(question))
               for i in range(body.get("n") or 1)]
    usage = a.usage(a.prompt_tokens(messages), answers)
    stream = bool(body.get("stream"))
    envelope = {**_envelope("chatcmpl", number, body),
                "object": "chat.completion.chunk" if stream else "chat.completion"}
    if stream:
        return stream_response(
            state, request, body, envelope, usage,
            opening=[a.chat_payload(answer, a.opening_delta(answer)) for answer in answers],
            steps=a.steps(answers, lambda answer, piece: a.chat_payload(answer, a.piece_delta(answer, piece))),
            closing=[a.chat_payload(answer, {}, answer.finish_reason) for answer in answers],
        )
    await generate(state, answers)
    choices = [{"index": answer.index, "message": a.message(answer), "logprobs": None,
                "finish_reason": answer.finish_reason} for answer in answers]
    return JSONResponse({**envelope, "choices": choices, "usage": usage})


async def completions(request: Request) -> Response:
    state = _state(request)
    body = await json_body(request)
    number = state.next_answer()
    prompt = body.get("prompt", "")
    prompts = [prompt] if isinstance(prompt, str) else [str(p) for p in prompt]
    n = body.get("n") or 1
    answers = [
        a.text_answer(p * n + i, state.replies.get(question) or a.answer_text(number, p * n + i, question),
                      body.get("max_tokens"))
        for p, question in enumerate(prompts)
        for i in range(n)
    ]
    usage = a.usage(sum(len(a.words(p)) for p in prompts), answers)
    envelope = {**_envelope("cmpl", number, body), "object": "text_completion"}
    if body.get("stream"):
        return stream_response(
            state, request, body, envelope, usage, opening=[], steps=a.steps(answers, a.text_payload),
            closing=[a.text_payload(answer, "", answer.finish_reason) for answer in answers],
        )
    await generate(state, answers)
    choices = [a.text_payload(answer, answer.text, answer.finish_reason) for answer in answers]
    return JSONResponse({**envelope, "choices": choices, "usage": usage})


async def embeddings(request: Request) -> Response:
    body = await json_body(request)
    raw = body.get("input", "")
    inputs = [raw] if isinstance(raw, str) else [str(item) for item in raw]
    dim = body.get("dimensions") or a.EMBEDDING_DIM
    as_base64 = body.get("encoding_format") == "base64"
    data = [
        {"object": "embedding", "index": i, "embedding": a.fake_embedding(text, dim, as_base64)}
        for i, text in enumerate(inputs)
    ]
    tokens = sum(len(a.words(text)) for text in inputs)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return JSONResponse({"object": "list", "data": data, "model": body.get("model", ""), "usage": usage})


async def list_models(request: Request) -> dict[str, Any]:
    return models_page(_state(request).models)


def models_page(models: Sequence[str]) -> dict[str, Any]:
    """GET /v1/models's answer."""
    return {"object": "list",
            "data": [{"id": m, "object": "model", "created": 0, "owned_by": "catcache-test"} for m in models]}


async def echo(request: Request) -> dict[str, Any]:
    """Anything else is echoed back, so tests can see exactly what a pass-through forwarded."""
    raw = (await request.body()).decode(errors="replace")
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = None
    return {
        "method": request.method,
        "path": request.url.path,
        "query": request.url.query,
        "headers": dict(request.headers),
        "body": raw,
        "json": parsed,
    }


async def stats(request: Request) -> dict[str, int]:
    return _state(request).stats()


async def prefix_cache(request: Request) -> dict[str, int]:
    state = _state(request)
    return {"hits": state.prefix_hits, "misses": state.prefix_misses, "slots": state.prefix_slots}


class CountAndFail:
    """ASGI middleware: count every call but /stats, answer `x-test-status` with an error, hang on `x-test-hang`."""

    def __init__(self, app: ASGIApp, state: BackendState):
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/stats"):
            return await self.app(scope, receive, send)
        self.state.count(scope["path"])
        headers = dict(scope["headers"])
        if headers.get(b"x-test-hang") == b"1":
            await asyncio.sleep(3600)
        status = headers.get(b"x-test-status", b"").decode()
        if status.isdigit():
            return await error(int(status), f"test backend: status {status} requested")(scope, receive, send)
        await self.app(scope, receive, send)


class BadRequest(Exception):
    pass


async def json_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    for name in ("max_tokens", "max_completion_tokens", "n"):  # as vLLM does, rather than fail on them
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise BadRequest(f"'{name}' must be a non-negative integer")
    return body


def error(status: int, message: str) -> JSONResponse:
    """An OpenAI error body with `status`."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    body = {"error": {"message": message, "type": kind, "param": None, "code": str(status)}}
    return JSONResponse(body, status_code=status)
