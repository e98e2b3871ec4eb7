"""catcache's ASGI app run in this process, on an event loop of its own, for tests that send many
requests: no sockets, no second interpreter, the real Redis, embedder and backend all the same."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import httpx
import openai

from catcache.proxy.app import Settings, create_app

T = TypeVar("T")


class TaskPerRequest(httpx.ASGITransport):
    """Each request in a task of its own, as uvicorn serves it: ASGITransport would run it in the
    caller's task, and single flight ties a flight to its leader's task, so two clients could each
    wait for a flight the other leads until their whole loops end."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await asyncio.create_task(super().handle_async_request(request))


class InProcess:
    def __init__(self, settings: Settings):
        self.app = create_app(settings)
        self.loop = asyncio.new_event_loop()
        self.http = httpx.AsyncClient(transport=TaskPerRequest(app=self.app), base_url="http://catcache", timeout=60)

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(work)

    def openai(self, api_key: str) -> openai.AsyncOpenAI:
        """The official SDK, talking to the app in-process."""
        return openai.AsyncOpenAI(base_url="http://catcache/v1", api_key=api_key, max_retries=0,
                                  http_client=self.http)


@contextmanager
def in_process(settings: Settings) -> Iterator[InProcess]:
    """The app with its lifespan entered (index rebuilt, backends open) until the block ends."""
    proxy = InProcess(settings)
    lifespan = proxy.app.router.lifespan_context(proxy.app)
    proxy.run(lifespan.__aenter__())
    try:
        yield proxy
    finally:
        proxy.run(proxy.http.aclose())
        proxy.run(lifespan.__aexit__(None, None, None))
        proxy.loop.close()
