"""Streamed answers as OpenAI sends them, paced by the backend's think time and token rate, with a
stream cut halfway on request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from .answers import Answer, sse
from .state import BackendState


class EventStream(StreamingResponse):
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


async def generate(state: BackendState, answers: list[Answer]) -> None:
    """Take as long as streaming the longest answer would, once a slot is free."""
    async with state.slot():
        await asyncio.sleep(state.think_s + state.token_s * max((len(a.pieces) for a in answers), default=0))


def stream_response(
    state: BackendState,
    request: Request,
    body: dict[str, Any],
    envelope: dict[str, Any],
    usage: dict[str, int] | None,
    opening: list[dict[str, Any]],
    steps: list[list[dict[str, Any]]],
    closing: list[dict[str, Any]],
) -> EventStream:
    """The stream of one request: `x-test-truncate: 1` cuts it halfway, usage only if asked for."""
    truncate = request.headers.get("x-test-truncate") == "1"
    if not (body.get("stream_options") or {}).get("include_usage"):
        usage = None
    events = _events(state, envelope, opening, steps, closing, usage, truncate)
    return EventStream(events, complete=not truncate)


async def _events(
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
            yield sse({**envelope, "choices": [payload]})
        for step in steps[: (len(steps) + 1) // 2] if truncate else steps:
            await asyncio.sleep(state.token_s)
            for payload in step:
                yield sse({**envelope, "choices": [payload]})
    if truncate:
        return
    for payload in closing:
        yield sse({**envelope, "choices": [payload]})
    if usage is not None:
        yield sse({**envelope, "choices": [], "usage": usage})
    yield b"data: [DONE]\n\n"
