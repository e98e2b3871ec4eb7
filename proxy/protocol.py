"""uvicorn's HTTP protocol with two changes: a deadline for a client to send its whole request,
and malformed HTTP answered in OpenAI's error shape.

uvicorn has no such deadline: a connection that sends nothing, or a header line a minute, or a
body a byte at a time, is held for as long as the client likes (a slowloris). This protocol
closes a connection whose request (head and body) has not fully arrived `read_timeout` seconds
after the connection opened or after the request's first byte (between requests, uvicorn's
keep-alive timeout closes an idle connection). Once a request is in, the
answer may take as long as the backend does: streams are not cut.

A request the HTTP parser refuses (a NUL in a header, a bad request line) gets uvicorn's 400,
but as JSON in OpenAI's shape like every other error catcache sends, not uvicorn's plain text.
"""

from __future__ import annotations

import asyncio
import logging

import orjson

from uvicorn.protocols.http.auto import AutoHTTPProtocol

log = logging.getLogger("catcache")
DEFAULT_CLIENT_TIMEOUT_S = 30.0


class _Protocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
    read_timeout = DEFAULT_CLIENT_TIMEOUT_S
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._deadline is None:  # the first bytes of the next request on a kept-alive connection
            self._arm()
        super().data_received(data)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Idle until the next request's first byte: uvicorn's keep-alive timeout governs that, and
        # a deadline counted from here would close a connection its client is just reusing.
        self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def send_400_response(self, msg: str) -> None:
        body = orjson.dumps({"error": {"message": msg, "type": "invalid_request_error", "param": None,
                                       "code": "invalid_http"}})
        self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
        self.transport.close()

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.read_timeout, self._check)

    def _check(self) -> None:
        self._deadline = None
        cycle = self.cycle
        # No request head since the deadline was armed (none yet, or only the previous one, done),
        # or its body still coming in: the client is too slow.
        arriving = cycle is None or cycle.response_complete or cycle.more_body
        if arriving and not self.transport.is_closing():
            log.info("closed a connection whose request took longer than %g s to arrive", self.read_timeout)
            self.transport.close()


def http_protocol(client_timeout: float = DEFAULT_CLIENT_TIMEOUT_S) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol with a `client_timeout` deadline for each request to arrive."""
    return type("CatcacheHTTPProtocol", (_Protocol,), {"read_timeout": client_timeout})
