"""A cap on request bodies, so a few clients with huge prompts cannot take the proxy's CPU.

Pure ASGI middleware rather than a route check: a body whose Content-Length is too large is
refused before a byte of it is read, and one sent without a length (chunked) is refused as soon
as the bytes received pass the cap, never after reading it whole.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from catcache.responses import openai_error

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024


class BodyTooLarge(Exception):
    """Raised from `receive` once a streamed body passes the cap."""


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_BODY_BYTES):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(scope, receive, send)
            return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except BodyTooLarge:
            if started:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = openai_error(413, f"The request body is larger than catcache's limit of {self.max_bytes} bytes.",
                                code="request_too_large")
        response.headers["connection"] = "close"  # the rest of the body is never read
        await response(scope, receive, send)
