"""An OpenAI-compatible stand-in for vLLM that tests and benchmarks put behind catcache.

Every generation answers "Answer #<n> to: <question>", where n counts generations across the
server's life: an answer whose n was already seen came from a cache, a new n means the backend was
called. Think time and a token rate make latency realistic, and request headers trigger the
failures a proxy must survive:

- `x-test-status: 503` answers that status with an OpenAI error body (any path but /stats);
- `x-test-truncate: 1` cuts a stream halfway, with neither finish_reason nor [DONE];
- `x-test-hang: 1` never answers (it holds the connection until the client gives up).

With `prefix_slots` it models vLLM's prefix cache for the routing bench: a chat request whose
system prompt is not among the last `prefix_slots` this server saw first waits `prefix_ms` more
(its prefill); GET /stats/prefix-cache counts hits and misses.

For the loaded IC bench it can stand in for a busy large model that knows the answers: with
`slots` only that many generations run at once and the rest wait their turn (a GPU's batch is
finite, so a queue forms under load), and `replies` maps a question (the last user message, or
the prompt) to the answer it gets instead of "Answer #n to: ...".

Run it alone with `python -m tests.backend --port 8000 --think-ms 400 --tokens-per-s 50`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import random
import re
import socket
import struct
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

DEFAULT_MODELS = ("test-model",)
EMBEDDING_DIM = 16


class BackendState:
    """Latency settings, per-path call counts and the generation counter, shared across threads."""

    def __init__(self, think_ms: float, tokens_per_s: float, models: Sequence[str],
                 prefix_ms: float = 0, prefix_slots: int = 0, slots: int = 0,
                 replies: Mapping[str, str] | None = None):
        self.think_s = think_ms / 1000
        self._slots = asyncio.Semaphore(slots) if slots else None
        self.replies = dict(replies or {})
        self.prefix_s = prefix_ms / 1000
        self.prefix_slots = prefix_slots
        self._prefixes: OrderedDict[str, None] = OrderedDict()  # least recently used first
        self.prefix_hits = self.prefix_misses = 0
        self.token_s = 1 / tokens_per_s if tokens_per_s > 0 else 0.0
        self.models = tuple(models)
        self._lock = threading.Lock()
        self._calls: Counter[str] = Counter()
        self._answers = 0

    def slot(self) -> AbstractAsyncContextManager[Any]:
        """Held while a generation runs: with `slots`, a queue forms behind the busy ones."""
        return self._slots if self._slots is not None else nullcontext()

    def count(self, path: str) -> None:
        with self._lock:
            self._calls[path] += 1

    def next_answer(self) -> int:
        with self._lock:
            self._answers += 1
            return self._answers

    def calls(self, path: str | None = None) -> int:
        with self._lock:
            return self._calls[path] if path is not None else sum(self._calls.values())

    def prefill_s(self, messages: list[dict[str, Any]]) -> float:
        """The prefill wait for this request's system prompt: none if it is among the cached ones."""
        if not self.prefix_slots:
            return 0.0
        prefix = repr([m.get("content") for m in messages if m.get("role") == "system"])
        with self._lock:
            if prefix in self._prefixes:
                self._prefixes.move_to_end(prefix)
                self.prefix_hits += 1
                return 0.0
            self._prefixes[prefix] = None
            if len(self._prefixes) > self.prefix_slots:
                self._prefixes.popitem(last=False)
            self.prefix_misses += 1
            return self.prefix_s

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._calls)

    def reset(self) -> None:
        """Zero the call counts; the answer counter keeps counting so old answers stay recognisable."""
        with self._lock:
            self._calls.clear()


class _CountAndFail:
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
            return await _error(int(status), f"test backend: status {status} requested")(scope, receive, send)
        await self.app(scope, receive, send)


class _EventStream(StreamingResponse):
    """Server-sent events; `complete=False` leaves the body unfinished, so the connection drops."""

    def __init__(self, events: AsyncIterator[bytes], complete: bool = True):
        super().__init__(events, media_type="text/event-stream", headers={"cache-control": "no-cache"})
        self.complete = complete

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        async for event in self.body_iterator:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        if self.complete:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


@dataclass(frozen=True)
class _Answer:
    """One choice: its streamed pieces (content, or tool-call arguments) and why it ended."""

    index: int
    pieces: list[str]
    finish_reason: str
    tool: dict[str, Any] | None = None  # the tool call, arguments left out (they are the pieces)

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def create_app(
    think_ms: float = 0, tokens_per_s: float = 0, models: Sequence[str] = DEFAULT_MODELS,
    prefix_ms: float = 0, prefix_slots: int = 0, slots: int = 0, replies: Mapping[str, str] | None = None,
) -> FastAPI:
    state = BackendState(think_ms, tokens_per_s, models, prefix_ms, prefix_slots, slots, replies)
    app = FastAPI(title="catcache test backend", openapi_url=None)
    app.state.backend = state
    app.add_middleware(_CountAndFail, state=state)
    app.add_exception_handler(_BadRequest, lambda request, exc: _error(400, str(exc)))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = await _json_body(request)
        number = state.next_answer()
        messages = body.get("messages") or []
        await asyncio.sleep(state.prefill_s(messages))
        question = _last_user_text(messages)
        tools = body.get("tools") or []
        tool = tools[0] if tools and "use tool" in question else None
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        answers = [_chat_answer(i, number, question, tool, limit, state.replies.get(question))
                   for i in range(body.get("n") or 1)]
        usage = _usage(sum(len(_words(_content_text(m.get("content")))) for m in messages), answers)
        stream = bool(body.get("stream"))
        envelope = {
            "id": f"chatcmpl-{number}",
            "object": "chat.completion.chunk" if stream else "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", ""),
        }

        if stream:
            return _stream_response(
                state,
                request,
                body,
                envelope,
                usage,
                opening=[_chat_payload(a, _opening_delta(a)) for a in answers],
                steps=_steps(answers, lambda a, piece: _chat_payload(a, _piece_delta(a, piece))),
                closing=[_chat_payload(a, {}, a.finish_reason) for a in answers],
            )
        await _generate(state, answers)
        choices = [
            {"index": a.index, "message": _message(a), "logprobs": None, "finish_reason": a.finish_reason}
            for a in answers
        ]
        return JSONResponse({**envelope, "choices": choices, "usage": usage})

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = await _json_body(request)
        number = state.next_answer()
        prompt = body.get("prompt", "")
        prompts = [prompt] if isinstance(prompt, str) else [str(p) for p in prompt]
        n = body.get("n") or 1
        answers = [
            _text_answer(p * n + i, state.replies.get(question) or _answer_text(number, p * n + i, question),
                         body.get("max_tokens"))
            for p, question in enumerate(prompts)
            for i in range(n)
        ]
        usage = _usage(sum(len(_words(p)) for p in prompts), answers)
        envelope = {
            "id": f"cmpl-{number}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": body.get("model", ""),
        }

        if body.get("stream"):
            return _stream_response(
                state,
                request,
                body,
                envelope,
                usage,
                opening=[],
                steps=_steps(answers, _text_payload),
                closing=[_text_payload(a, "", a.finish_reason) for a in answers],
            )
        await _generate(state, answers)
        choices = [_text_payload(a, a.text, a.finish_reason) for a in answers]
        return JSONResponse({**envelope, "choices": choices, "usage": usage})

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        body = await _json_body(request)
        raw = body.get("input", "")
        inputs = [raw] if isinstance(raw, str) else [str(item) for item in raw]
        dim = body.get("dimensions") or EMBEDDING_DIM
        as_base64 = body.get("encoding_format") == "base64"
        data = [
            {"object": "embedding", "index": i, "embedding": _fake_embedding(text, dim, as_base64)}
            for i, text in enumerate(inputs)
        ]
        tokens = sum(len(_words(text)) for text in inputs)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return JSONResponse({"object": "list", "data": data, "model": body.get("model", ""), "usage": usage})

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "catcache-test"} for m in state.models]
        return {"object": "list", "data": data}

    @app.api_route("/v1/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
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

    @app.get("/stats")
    async def stats() -> dict[str, int]:
        return state.stats()

    @app.get("/stats/prefix-cache")
    async def prefix_cache() -> dict[str, int]:
        return {"hits": state.prefix_hits, "misses": state.prefix_misses, "slots": state.prefix_slots}

    return app


# -- answers -------------------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    """Whitespace-separated tokens, each keeping the space before it, so they join back exactly."""
    return re.findall(r"\s*\S+", text)


def _answer_text(number: int, index: int, question: str) -> str:
    label = f"#{number}" if index == 0 else f"#{number} choice {index}"
    return f"Answer {label} to: {question}"


def _text_answer(index: int, text: str, limit: int | None, tool: dict[str, Any] | None = None) -> _Answer:
    pieces = _words(text)
    if limit is not None and len(pieces) > limit:
        return _Answer(index, pieces[:limit], "length", tool)
    return _Answer(index, pieces, "tool_calls" if tool else "stop", tool)


def _chat_answer(
    index: int, number: int, question: str, tool: dict[str, Any] | None, limit: int | None, text: str | None = None
) -> _Answer:
    if tool is None:
        return _text_answer(index, text or _answer_text(number, index, question), limit)
    name = tool.get("function", {}).get("name", "")
    call = {"id": f"call_{number}_{index}", "type": "function", "function": {"name": name}}
    return _text_answer(index, json.dumps({"question": question, "answer": number}), limit, call)


def _message(answer: _Answer) -> dict[str, Any]:
    if answer.tool is None:
        return {"role": "assistant", "content": answer.text}
    function = {**answer.tool["function"], "arguments": answer.text}
    return {"role": "assistant", "content": None, "tool_calls": [{**answer.tool, "function": function}]}


def _opening_delta(answer: _Answer) -> dict[str, Any]:
    if answer.tool is None:
        return {"role": "assistant", "content": ""}
    function = {**answer.tool["function"], "arguments": ""}
    call = {"index": 0, **answer.tool, "function": function}
    return {"role": "assistant", "content": None, "tool_calls": [call]}


def _piece_delta(answer: _Answer, piece: str) -> dict[str, Any]:
    if answer.tool is None:
        return {"content": piece}
    return {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}


def _chat_payload(answer: _Answer, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {"index": answer.index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def _text_payload(answer: _Answer, text: str, finish_reason: str | None = None) -> dict[str, Any]:
    return {"index": answer.index, "text": text, "logprobs": None, "finish_reason": finish_reason}


def _steps(
    answers: list[_Answer], payload: Callable[[_Answer, str], dict[str, Any]]
) -> list[list[dict[str, Any]]]:
    """Choice payloads grouped by token position: all choices advance one token per step."""
    longest = max((len(a.pieces) for a in answers), default=0)
    return [[payload(a, a.pieces[k]) for a in answers if k < len(a.pieces)] for k in range(longest)]


def _usage(prompt_tokens: int, answers: list[_Answer]) -> dict[str, int]:
    completion_tokens = sum(len(a.pieces) for a in answers)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


async def _generate(state: BackendState, answers: list[_Answer]) -> None:
    """Take as long as streaming the longest answer would, once a slot is free."""
    async with state.slot():
        await asyncio.sleep(state.think_s + state.token_s * max((len(a.pieces) for a in answers), default=0))


def _stream_response(
    state: BackendState,
    request: Request,
    body: dict[str, Any],
    envelope: dict[str, Any],
    usage: dict[str, int] | None,
    opening: list[dict[str, Any]],
    steps: list[list[dict[str, Any]]],
    closing: list[dict[str, Any]],
) -> _EventStream:
    truncate = request.headers.get("x-test-truncate") == "1"
    if not (body.get("stream_options") or {}).get("include_usage"):
        usage = None
    events = _stream_events(state, envelope, opening, steps, closing, usage, truncate)
    return _EventStream(events, complete=not truncate)


async def _stream_events(
    state: BackendState,
    envelope: dict[str, Any],
    opening: list[dict[str, Any]],
    steps: list[list[dict[str, Any]]],
    closing: list[dict[str, Any]],
    usage: dict[str, int] | None,
    truncate: bool,
) -> AsyncIterator[bytes]:
    """Chunks as OpenAI sends them: one choice each, `usage: null` on all but the usage chunk."""
    if usage is not None:
        envelope = {**envelope, "usage": None}
    async with state.slot():
        await asyncio.sleep(state.think_s)
        for payload in opening:
            yield _sse({**envelope, "choices": [payload]})
        for step in steps[: (len(steps) + 1) // 2] if truncate else steps:
            await asyncio.sleep(state.token_s)
            for payload in step:
                yield _sse({**envelope, "choices": [payload]})
    if truncate:
        return
    for payload in closing:
        yield _sse({**envelope, "choices": [payload]})
    if usage is not None:
        yield _sse({**envelope, "choices": [], "usage": usage})
    yield b"data: [DONE]\n\n"


def _sse(chunk: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def _content_text(content: Any) -> str:
    """A message's text, whether content is a string or a list of typed parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return _content_text(message.get("content"))
    return ""


def _fake_embedding(text: str, dim: int, as_base64: bool) -> list[float] | str:
    """A unit vector seeded by the text: equal texts embed alike, different ones do not."""
    rng = random.Random(hashlib.sha256(text.encode()).digest())
    vector = [rng.gauss(0, 1) for _ in range(dim)]
    norm = sum(x * x for x in vector) ** 0.5
    vector = [x / norm for x in vector]
    if as_base64:
        return base64.b64encode(struct.pack(f"<{dim}f", *vector)).decode()
    return vector


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise _BadRequest("request body must be a JSON object")
    for name in ("max_tokens", "max_completion_tokens", "n"):  # as vLLM does, rather than fail on them
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise _BadRequest(f"'{name}' must be a non-negative integer")
    return body


class _BadRequest(Exception):
    pass


def _error(status: int, message: str) -> JSONResponse:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    body = {"error": {"message": message, "type": kind, "param": None, "code": str(status)}}
    return JSONResponse(body, status_code=status)


# -- running it ----------------------------------------------------------------------------------


class TestBackend:
    """The backend in a background thread of this process, on a free loopback port."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        think_ms: float = 0,
        tokens_per_s: float = 0,
        models: Sequence[str] = DEFAULT_MODELS,
        port: int = 0,
        prefix_ms: float = 0,
        prefix_slots: int = 0,
        slots: int = 0,
        replies: Mapping[str, str] | None = None,
    ):
        self.app = create_app(think_ms, tokens_per_s, models, prefix_ms, prefix_slots, slots, replies)
        self.state: BackendState = self.app.state.backend
        self._port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def start(self) -> str:
        """Serve until stop(); returns the base URL for an OpenAI client (ending in /v1)."""
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._port))
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app, log_config=None, log_level="warning", access_log=False, timeout_graceful_shutdown=1
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="test-backend", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test backend did not start")
            time.sleep(0.01)
        return self.base_url

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(10)
        self._server = self._thread = None

    def calls(self, path: str | None = None) -> int:
        """Calls to `path` (e.g. "/v1/chat/completions"), or to any path."""
        return self.state.calls(path)

    def reset(self) -> None:
        self.state.reset()

    def __enter__(self) -> TestBackend:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--think-ms", type=float, default=0, help="delay before the first token")
    parser.add_argument("--tokens-per-s", type=float, default=0, help="token rate; 0 sends all at once")
    parser.add_argument("--model", action="append", help="a model for /v1/models (repeatable)")
    parser.add_argument("--prefix-slots", type=int, default=0, help="system prompts the prefix cache holds")
    parser.add_argument("--prefix-ms", type=float, default=0, help="prefill wait of a system prompt not cached")
    parser.add_argument("--slots", type=int, default=0, help="generations at once, the rest queue; 0: no limit")
    parser.add_argument("--replies", help="a JSON file {question: answer} of answers to give instead of 'Answer #n'")
    args = parser.parse_args()
    replies = json.loads(open(args.replies, encoding="utf-8").read()) if args.replies else None
    app = create_app(args.think_ms, args.tokens_per_s, args.model or DEFAULT_MODELS, args.prefix_ms,
                     args.prefix_slots, args.slots, replies)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
