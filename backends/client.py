"""HTTP to an OpenAI-compatible backend (vLLM in production), one pooled client per backend.

A backend with several replica URLs routes each request through backends/replicas.py; a replica
that refuses the connection is marked down and the request goes to the next one (nothing was
sent, so retrying is safe), and a probe every `HEALTH_INTERVAL_S` brings it back once it answers.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from urllib.parse import quote

import httpx

from catcache.backends.replicas import Replica, ReplicaSet
from catcache.backends.http11 import Http11Transport
from catcache.backends.tcp import transport
from catcache.policy.schema import Backend

log = logging.getLogger("catcache.backends")

HEALTH_INTERVAL_S = 5.0

# Headers that describe one hop, not the message: never forwarded in either direction.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "host", "content-length"}


def forwardable(headers: httpx.Headers | dict, drop: set[str] = frozenset()) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP and k.lower() not in drop}


# Idle connections are dropped before the backend drops them: uvicorn (and so vLLM) closes them after 5 s,
# and a request sent on one it is closing fails with a ReadError, a 502 for the client. httpx's default is 5 s.
KEEPALIVE_S = 3.0


# RFC 3986's pchar plus "/": what a path segment may hold unquoted.
PATH_SAFE = "/:@!$&'()*+,;=-._~"


class OutsideBase(ValueError):
    """A pass-through path that would leave the backend's base URL once resolved."""


def _wire(text: str) -> bytes:
    """A header name or value as the bytes it came in as.

    The ASGI server decodes header bytes as Latin-1, so encoding back to Latin-1 forwards a
    client's `café` or UTF-8 API key byte for byte; httpx would encode a str as ASCII and fail.
    Text from elsewhere (an API key from the environment) beyond Latin-1 goes as UTF-8."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode()


class _Released(httpx.AsyncByteStream):
    """A response body that gives back, when it is closed, the in-flight slots its request took:
    its replica's (the routing's load signal) and its backend's (the adaptive policy's). The one
    place either count goes down once a response has arrived, whatever path closes it."""

    def __init__(self, inner: httpx.AsyncByteStream, replica: Replica, backend: BackendClient | None):
        self._inner = inner
        self._slots: tuple[Replica, BackendClient | None] | None = (replica, backend)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            if self._slots is not None:
                replica, backend = self._slots
                replica.in_flight -= 1
                if backend is not None:
                    backend.in_flight -= 1
                self._slots = None


class BackendClient:
    def __init__(self, name: str, config: Backend, health_interval_s: float = HEALTH_INTERVAL_S):
        self.name = name
        self.config = config
        self.replicas = ReplicaSet(config.replica_urls, config.routing, config.load_factor)
        self.base_url = self.replicas.replicas[0].url
        self.in_flight = 0  # requests awaiting this backend now: the adaptive policy's load signal
        self._health_interval_s = health_interval_s
        self._health: asyncio.Task | None = None
        limits = httpx.Limits(max_connections=512, max_keepalive_connections=128, keepalive_expiry=KEEPALIVE_S)
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(config.timeout, connect=5.0),
                                       transport=Http11Transport(limits, fallback=transport(limits)))

    def target(self, path: str, query: str = "", base_url: str | None = None) -> str:
        """`/v1/chat/completions` -> the backend's base URL (which ends in /v1) + `/chat/completions`.

        `path` is the decoded request path; it is quoted again, so a `%3F` the client sent stays
        part of the path, and one with a `.` or `..` segment raises OutsideBase: the backend would
        resolve it, and `/v1/../control` would reach the backend's `/control`."""
        suffix = path.removeprefix("/v1")
        if not (suffix == "" or suffix.startswith("/")) or any(s in (".", "..") for s in suffix.split("/")):
            raise OutsideBase(path)
        return f"{base_url or self.base_url}{quote(suffix, safe=PATH_SAFE)}" + (f"?{query}" if query else "")

    def headers(self, incoming: dict[str, str]) -> list[tuple[bytes, bytes]]:
        headers = dict(incoming)
        if self.config.api_key_env and os.environ.get(self.config.api_key_env):
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            headers["authorization"] = f"Bearer {os.environ[self.config.api_key_env]}"
        return [(_wire(k), _wire(v)) for k, v in headers.items()]

    async def open(self, method: str, path: str, *, headers: dict[str, str], content: bytes,
                   query: str = "", affinity: str | None = None, load: bool = True) -> httpx.Response:
        """Send and return as soon as the status line arrives; the caller reads and closes the body.

        The request counts in `in_flight` from now until the body is closed (or the send fails),
        unless `load` is False: a probe (GET /models for /metrics) is not work the backend has in
        hand, and counted it would hold speculation and the adaptive policy back while a monitor
        scrapes. `affinity` names the request's prompt prefix (replicas.affinity_key); with
        several replicas, requests that share it go to the same one."""
        self._watch_health()
        counted = 1 if load else 0
        self.in_flight += counted
        try:
            response, replica = await self._send(method, path, headers, content, query, affinity)
        except BaseException:
            self.in_flight -= counted
            raise
        response.stream = _Released(response.stream, replica, self if load else None)
        return response

    async def _send(self, method: str, path: str, headers: dict[str, str], content: bytes, query: str,
                    affinity: str | None) -> tuple[httpx.Response, Replica]:
        """The first replica that takes the request; the replica's slot is taken until the body closes."""
        failure: httpx.HTTPError | None = None
        for replica in self.replicas.order(affinity):
            request = self._http.build_request(method, self.target(path, query, replica.url),
                                               headers=self.headers(headers), content=content)
            replica.in_flight += 1
            try:
                response = await self._http.send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                replica.in_flight -= 1
                if len(self.replicas) > 1:
                    self._mark_down(replica, exc)
                failure = exc
                continue
            except BaseException:
                replica.in_flight -= 1
                raise
            return response, replica
        assert failure is not None
        raise failure

    def _mark_down(self, replica: Replica, reason: object) -> None:
        if replica.healthy:
            log.warning("%s replica %s is down (%r): its requests go to the others", self.name, replica.url, reason)
        replica.healthy = False

    def _watch_health(self) -> None:
        if self._health is None and len(self.replicas) > 1:
            self._health = asyncio.get_running_loop().create_task(self._probe_forever())

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.gather(*(self._probe(replica) for replica in self.replicas.replicas))
            await asyncio.sleep(self._health_interval_s)

    async def _probe(self, replica: Replica) -> None:
        """Any HTTP answer to GET /models means the replica is serving (vLLM answers it without auth)."""
        try:
            await self._http.get(f"{replica.url}/models", headers=self.headers({}), timeout=2.0)
        except httpx.HTTPError as exc:
            self._mark_down(replica, exc)
            return
        if not replica.healthy:
            log.info("%s replica %s answers again", self.name, replica.url)
        replica.healthy = True

    async def aclose(self) -> None:
        if self._health is not None:
            self._health.cancel()
        await self._http.aclose()
