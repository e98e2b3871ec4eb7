"""Upstream connections that never wait on Nagle's algorithm or on a delayed ACK.

Two stalls of about 40 ms each hit a proxy on a keep-alive connection to a plain HTTP/1.1 server
(Python's `http.server`, many small servers):
- our side: a request written in pieces (head, then body) with Nagle on holds the body until the
  head is acknowledged; TCP_NODELAY sends each piece at once;
- their side: a server that writes the response head and body separately without TCP_NODELAY
  holds the body until we acknowledge the head, and Linux delays that ACK by up to 40 ms once
  a connection looks interactive. Re-arming TCP_QUICKACK before each read acknowledges at once
  (the flag does not stick, so one setsockopt at connect is not enough).
uvicorn (and vLLM) write a response in one go, so neither stall shows in front of them.

This is httpx's own transport so tuned; it carries what backends/http11.py leaves to it (TLS,
HEAD, streamed request bodies), and http11 does the same for the plain-HTTP calls.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import typing

import httpcore
import httpx

NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only; elsewhere reads are left alone


class _QuickAckStream(httpcore.AsyncNetworkStream):
    def __init__(self, stream: httpcore.AsyncNetworkStream):
        self._stream = stream
        self._socket = stream.get_extra_info("socket")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if self._socket is not None and self._socket.fileno() >= 0:
            # A socket the backend reset or closed may refuse the option: the read below then
            # raises httpcore's ReadError (a 502 for the client), not a ValueError (a 500).
            with contextlib.suppress(OSError):
                self._socket.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)
        return await self._stream.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._stream.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        return await self._stream.start_tls(ssl_context, server_hostname, timeout)  # TLS: ACKs of its own

    def get_extra_info(self, info: str) -> typing.Any:
        return self._stream.get_extra_info(info)


class _QuickAckBackend(httpcore.AsyncNetworkBackend):
    def __init__(self) -> None:
        self._backend = httpcore.AnyIOBackend()

    async def connect_tcp(self, *args: typing.Any, **kwargs: typing.Any) -> httpcore.AsyncNetworkStream:
        return _QuickAckStream(await self._backend.connect_tcp(*args, **kwargs))

    async def connect_unix_socket(self, *args: typing.Any, **kwargs: typing.Any) -> httpcore.AsyncNetworkStream:
        return await self._backend.connect_unix_socket(*args, **kwargs)

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


def transport(limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
    """An httpx transport with TCP_NODELAY on every socket and, on Linux, quick ACKs on every read."""
    http = httpx.AsyncHTTPTransport(limits=limits, socket_options=NODELAY)
    if QUICKACK is not None:
        # httpx has no public hook for the network backend; its pool takes one (httpcore's API).
        http._pool._network_backend = _QuickAckBackend()
    return http
