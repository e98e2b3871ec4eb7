"""A lean HTTP/1.1 transport for httpx: asyncio protocols and the httptools (llhttp) parser.

httpx's own transport (httpcore over anyio, with h11's pure-Python parser) costs about 0.7 ms of
CPU per call, and as much latency, on top of what a plain backend needs to answer (measured in
bench/README.md, section 3): more than the rest of a pass-through. Every miss pays it once, so
plain-HTTP calls with a body in memory take this path instead; the rest (TLS, HEAD, streamed
request bodies) goes to `fallback`, httpx's own. The client above is httpx all the same: its
`Response`, its exceptions, its content decoding.

Like tcp.py's transport: TCP_NODELAY on every socket, and TCP_QUICKACK re-armed on every read
(a server that writes a response's head and body apart, without TCP_NODELAY, would otherwise
hold the body until our delayed ACK, up to 40 ms). Idle connections are dropped after
`keepalive_expiry`, or at once when the server closes them (a protocol hears it, no polling).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import time
from collections.abc import AsyncIterator

import httptools
import httpx

QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only
PAUSE_AT = 256 * 1024  # buffered body bytes at which reading stops until the caller catches up
RESUME_AT = 64 * 1024

Origin = tuple[str, int]


class _Connection(asyncio.Protocol):
    """One keep-alive connection; it carries one request at a time."""

    def __init__(self, origin: Origin):
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._socket: socket.socket | None = None
        self._waiter: asyncio.Future | None = None
        self.ready()

    def ready(self) -> None:
        """Ready for the next request and its response."""
        self.active = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = self.complete = self.framed = self.keep_alive = self._interim = False
        self.error: httpx.TransportError | None = None
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.paused = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are not asyncio.Transport subclasses
        self._socket = transport.get_extra_info("socket")
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if not self.active:  # nothing asked: a server that talks out of turn is not reused
            self.close()
            return
        self.quick_ack()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"the backend's answer is not HTTP/1.1: {exc}"))
            self.close()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.active and not self.complete:
            if self.headers_done and not self.framed and exc is None:
                self.complete = True  # a body without length or chunks ends where the connection does
            elif exc is not None:
                self._fail(httpx.ReadError(f"{type(exc).__name__}: {exc}"))
            else:
                self._fail(httpx.RemoteProtocolError("the backend closed the connection before its answer was whole"))
        self._wake()

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            self._interim = True  # 100 Continue and the like: the real answer follows
            return
        self.status = status
        self.framed = any(name.lower() in (b"content-length", b"transfer-encoding") for name, _ in self.headers)
        self.keep_alive = self._parser.should_keep_alive()  # llhttp knows it while the message lasts
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > PAUSE_AT and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            self.headers = []
            return
        self.complete = True

    # the caller's side
    def send(self, head: bytes, body: bytes) -> None:
        assert self.transport is not None
        self.active = True
        self.transport.write(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            self.transport.write(body)
        # uvloop sends what was written once this callback returns, and a send makes Linux delay ACKs
        # again: quick ACKs are re-armed once it has gone.
        asyncio.get_running_loop().call_soon(self.quick_ack)

    async def wait(self, timeout: float | None) -> None:
        """Until the parser has more to tell: headers, a piece of body, the end, or a failure."""
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await self._waiter
        except TimeoutError:
            raise httpx.ReadTimeout(f"no byte from the backend within {timeout} s") from None
        finally:
            self._waiter = None

    def take(self) -> bytes:
        chunk = self.chunks.popleft()
        self.buffered -= len(chunk)
        if self.paused and self.buffered < RESUME_AT and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return chunk

    @property
    def reusable(self) -> bool:
        return not self.closed and self.complete and self.error is None and self.keep_alive

    def quick_ack(self) -> None:
        if QUICKACK is not None and self._socket is not None and self._socket.fileno() >= 0:
            with contextlib.suppress(OSError):
                self._socket.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _fail(self, error: httpx.TransportError) -> None:
        if self.error is None:
            self.error = error

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class _Body(httpx.AsyncByteStream):
    """A response body as the connection receives it; closing it gives the connection back to
    the pool if the answer was whole and the server keeps it open, else closes it."""

    def __init__(self, pool: Http11Transport, connection: _Connection, request: httpx.Request, read: float | None):
        self._pool, self._connection, self._request, self._read = pool, connection, request, read
        self._done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        connection = self._connection
        while True:
            if connection.chunks:
                yield connection.take()
                continue
            if connection.complete:  # whole, whatever the backend sends after it
                return
            if connection.error is not None:
                raise _bound(connection.error, self._request)
            await connection.wait(self._read)

    async def aclose(self) -> None:
        if not self._done:
            self._done = True
            self._pool.release(self._connection)


class Http11Transport(httpx.AsyncBaseTransport):
    def __init__(self, limits: httpx.Limits, fallback: httpx.AsyncBaseTransport):
        self._fallback = fallback
        self._idle: dict[Origin, list[_Connection]] = {}
        self._max_idle = limits.max_keepalive_connections
        self._expiry = limits.keepalive_expiry if limits.keepalive_expiry is not None else float("inf")
        self._slots = asyncio.Semaphore(limits.max_connections) if limits.max_connections else None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme != "http" or request.method == "HEAD" or not isinstance(request.stream, httpx.ByteStream):
            return await self._fallback.handle_async_request(request)
        timeouts = request.extensions.get("timeout", {})
        origin = (url.host, url.port or 80)
        if self._slots is not None:
            try:
                async with asyncio.timeout(timeouts.get("pool")):
                    await self._slots.acquire()
            except TimeoutError:
                raise httpx.PoolTimeout("no free connection to the backend in time", request=request) from None
        try:
            connection = self._idle_connection(origin) or await self._connect(origin, timeouts.get("connect"), request)
            return await self._exchange(connection, request, timeouts.get("read"))
        except BaseException:
            if self._slots is not None:
                self._slots.release()
            raise

    async def _exchange(self, connection: _Connection, request: httpx.Request, read: float | None) -> httpx.Response:
        """Send `request` and wait for the head of its answer; any failure or cancellation closes the connection."""
        target = request.url.raw_path
        head = b"".join([request.method.encode(), b" ", target, b" HTTP/1.1\r\n",
                         *(name + b": " + value + b"\r\n" for name, value in request.headers.raw), b"\r\n"])
        try:
            connection.send(head, request.content)
            while not connection.headers_done:
                if connection.error is not None:
                    raise _bound(connection.error, request)
                if connection.closed:
                    raise httpx.RemoteProtocolError("the backend closed the connection without answering",
                                                    request=request)
                await connection.wait(read)
        except BaseException:
            connection.close()
            raise
        return httpx.Response(connection.status, headers=connection.headers,
                              stream=_Body(self, connection, request, read),
                              extensions={"http_version": b"HTTP/1.1"})

    def _idle_connection(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if not connection.closed and now - connection.idle_since < self._expiry:
                return connection
            connection.close()
        return None

    async def _connect(self, origin: Origin, timeout: float | None, request: httpx.Request) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, connection = await loop.create_connection(lambda: _Connection(origin), *origin)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"no connection to {origin[0]}:{origin[1]} within {timeout} s",
                                       request=request) from None
        except OSError as exc:
            raise httpx.ConnectError(f"{type(exc).__name__}: {exc}", request=request) from exc
        return connection

    def release(self, connection: _Connection) -> None:
        """A response closed: its connection kept for the next request, or closed."""
        if self._slots is not None:
            self._slots.release()
        idle = self._idle.setdefault(connection.origin, [])
        if connection.reusable and len(idle) < self._max_idle:
            connection.ready()
            connection.idle_since = time.monotonic()
            idle.append(connection)
        else:
            connection.close()

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
        await self._fallback.aclose()


def _bound(error: httpx.TransportError, request: httpx.Request) -> httpx.TransportError:
    """`error` with its request, as httpx's exceptions carry one."""
    error.request = request
    return error
