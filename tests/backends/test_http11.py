"""The lean HTTP/1.1 transport under BackendClient: keep-alive, whole and streamed answers from
both test servers, a call cancelled while the backend thinks, and probes that are not load."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import orjson
import pytest

from catcache.backends.client import BackendClient
from catcache.policy.schema import Backend
from catcache.testing import TestBackend
from catcache.testing.plain_backend import PlainBackend

CHAT = "/v1/chat/completions"


@pytest.fixture(params=["uvicorn", "plain"])
def backend(request) -> Iterator[TestBackend]:
    """The uvicorn test backend, or the plain `http.server` one (head and body written apart)."""
    if request.param == "uvicorn":
        with TestBackend() as server:
            yield server
    else:
        with PlainBackend() as server:
            yield server


def ask(question: str, stream: bool = False) -> bytes:
    return orjson.dumps({"model": "test-model", "stream": stream, "messages": [{"role": "user", "content": question}]})


def test_answers_come_whole_and_streamed_over_kept_connections(backend):
    async def scenario() -> None:
        client = BackendClient("large", Backend(url=backend.base_url))
        try:
            for n in range(30):
                response = await client.open("POST", CHAT, headers={"content-type": "application/json"},
                                             content=ask(f"question {n}"))
                body = orjson.loads(await response.aread())
                await response.aclose()
                assert response.status_code == 200 and f"question {n}" in body["choices"][0]["message"]["content"]
            response = await client.open("POST", CHAT, headers={"content-type": "application/json"},
                                         content=ask("a streamed one", stream=True))
            pieces = [piece async for piece in response.aiter_bytes()]
            await response.aclose()
            assert response.headers["content-type"].startswith("text/event-stream")
            assert b"".join(pieces).rstrip().endswith(b"data: [DONE]")
            assert client.in_flight == 0
        finally:
            await client.aclose()

    asyncio.run(scenario())
    assert backend.calls(CHAT) == 31


def test_a_call_cancelled_while_the_backend_thinks_gives_its_slot_back():
    with TestBackend() as backend:
        backend.state.think_s = 5.0

        async def scenario() -> None:
            client = BackendClient("large", Backend(url=backend.base_url))
            try:
                call = asyncio.ensure_future(client.open("POST", CHAT, headers={}, content=ask("slow")))
                while backend.calls(CHAT) == 0:
                    await asyncio.sleep(0.01)
                assert client.in_flight == 1
                call.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await call
                assert client.in_flight == 0
                backend.state.think_s = 0
                response = await client.open("POST", CHAT, headers={}, content=ask("next"))
                assert response.status_code == 200 and b"next" in await response.aread()
                await response.aclose()
            finally:
                await client.aclose()

        asyncio.run(scenario())


def test_a_probe_is_not_counted_as_load():
    with TestBackend() as backend:
        async def scenario() -> None:
            client = BackendClient("large", Backend(url=backend.base_url))
            try:
                probe = await client.open("GET", "/v1/models", headers={}, content=b"", load=False)
                assert client.in_flight == 0
                call = await client.open("POST", CHAT, headers={}, content=ask("counted"))
                assert client.in_flight == 1
                await call.aclose()
                await probe.aclose()
                assert client.in_flight == 0
            finally:
                await client.aclose()

        asyncio.run(scenario())
