"""HTTP to an OpenAI-compatible backend (vLLM in production), one pooled client per backend."""

from __future__ import annotations

import os

import httpx

from catcache.backends.tcp import transport
from catcache.policy.schema import Backend

# Headers that describe one hop, not the message: never forwarded in either direction.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "host", "content-length"}


def forwardable(headers: httpx.Headers | dict, drop: set[str] = frozenset()) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP and k.lower() not in drop}


class BackendClient:
    def __init__(self, name: str, config: Backend):
        self.name = name
        self.config = config
        self.base_url = config.url.rstrip("/")
        self.in_flight = 0  # requests awaiting this backend now: the adaptive policy's load signal
        limits = httpx.Limits(max_connections=512, max_keepalive_connections=128)
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(config.timeout, connect=5.0),
                                       transport=transport(limits))

    def target(self, path: str, query: str = "") -> str:
        """`/v1/chat/completions` -> the backend's base URL (which ends in /v1) + `/chat/completions`."""
        suffix = path.removeprefix("/v1")
        return f"{self.base_url}{suffix}" + (f"?{query}" if query else "")

    def headers(self, incoming: dict[str, str]) -> dict[str, str]:
        headers = dict(incoming)
        if self.config.api_key_env and os.environ.get(self.config.api_key_env):
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            headers["authorization"] = f"Bearer {os.environ[self.config.api_key_env]}"
        return headers

    async def open(self, method: str, path: str, *, headers: dict[str, str], content: bytes,
                   query: str = "") -> httpx.Response:
        """Send and return as soon as the status line arrives; the caller reads and closes the body."""
        request = self._http.build_request(method, self.target(path, query), headers=self.headers(headers),
                                           content=content)
        return await self._http.send(request, stream=True)

    async def aclose(self) -> None:
        await self._http.aclose()
