"""A backend that resets, half-closes, sends garbage or trickles, and clients that send bytes
HTTP allows but ASCII does not: every answer is a JSON error in OpenAI's shape or a good answer,
and every in-flight gauge is back to 0 afterwards (issue 21, findings 1 and 2)."""

from __future__ import annotations

import asyncio

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import httpx
import openai
import orjson
import pytest

from catcache.proxy.app import Settings

from catcache.testing.hostile import HostileBackend
from catcache.testing.inprocess import InProcess, in_process

POLICIES = Path(__file__).parents[1] / "data" / "policies-e2e.yaml"
BROKEN = ("reset", "close", "half", "garbage", "short")


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileBackend]:
    with HostileBackend(seed=21) as server:
        yield server


@pytest.fixture(scope="module")
def proxy(hostile, server_redis_url) -> Iterator[InProcess]:
    with in_process(Settings(backend=hostile.base_url, policies=POLICIES, redis_url=server_redis_url,
                             backend_timeout=5.0)) as running:
        yield running


def in_flight(proxy: InProcess) -> dict[str, int]:
    """Every in-flight gauge: per backend, and per replica of each."""
    gauges = {}
    for name, client in proxy.app.state.proxy.live.backends.items():
        gauges[name] = client.in_flight
        gauges |= {f"{name} {replica.url}": replica.in_flight for replica in client.replicas.replicas}
    return gauges


def assert_openai_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text[:300]
    assert response.headers["content-type"].startswith("application/json"), response.text[:300]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


@pytest.mark.parametrize("value", ["café".encode(), "café".encode("latin-1"), b"\xff\xfe raw", "ключ-😀".encode()])
def test_non_ascii_header_bytes_are_forwarded_as_sent(proxy, hostile, api_key, value) -> None:
    """A header HTTP allows (obs-text) reaches the backend byte for byte: no 500, no leaked slot.
    (Raw httpx: the SDK itself cannot send such a header.)"""
    body = {"model": "m", "messages": [{"role": "user", "content": f"note {value!r} {api_key}"}]}
    response = proxy.run(proxy.http.post("/v1/chat/completions", json=body, headers={
        "x-hostile": "ok", "x-note": value, "authorization": f"Bearer {api_key}"}))
    assert response.status_code == 200, response.text[:300]
    assert response.json()["choices"][0]["message"]["content"].startswith("hostile answer")
    assert hostile.last_headers[b"x-note"] == value
    assert set(in_flight(proxy).values()) == {0}


def test_a_non_ascii_api_key_is_a_tenant_of_its_own(proxy, hostile, api_key) -> None:
    """`Authorization: Bearer sk-é...` as raw UTF-8 bytes: forwarded, and scoped apart from the
    ASCII key it resembles."""
    question = [{"role": "user", "content": f"which tenant am I {api_key}"}]
    headers = {"x-hostile": "ok"}
    plain = proxy.openai(api_key)
    first = proxy.run(plain.chat.completions.with_raw_response.create(model="m", messages=question,
                                                                      extra_headers=headers))
    accented = proxy.run(proxy.http.post("/v1/chat/completions", json={"model": "m", "messages": question},
                                         headers={**headers, "authorization": b"Bearer " + api_key.replace(
                                             "sk", "sk\xe9").encode()}))
    assert first.headers["x-catcache"] == "miss"
    assert accented.status_code == 200 and accented.headers["x-catcache"] == "miss"
    assert hostile.last_headers[b"authorization"] == b"Bearer " + api_key.replace("sk", "sk\xe9").encode()
    assert set(in_flight(proxy).values()) == {0}


@pytest.mark.parametrize("behaviour", BROKEN)
@pytest.mark.parametrize("stream", [False, True])
def test_a_broken_backend_is_a_502_in_openai_shape(proxy, api_key, behaviour, stream) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": f"{behaviour} {stream} {api_key}"}],
            "stream": stream}
    try:
        response = proxy.run(proxy.http.post("/v1/chat/completions", json=body, headers={"x-hostile": behaviour}))
    except httpx.TransportError:
        # The backend's head came, so the client's stream had begun: it is broken off (in-process,
        # the app's exception reaches the client), never ended as if complete.
        assert stream
    else:
        assert assert_openai_error(response, 502)["code"] == "backend_unreachable"
    assert set(in_flight(proxy).values()) == {0}


@pytest.mark.parametrize("behaviour", BROKEN)
def test_a_broken_backend_behind_pass_through_is_a_502(proxy, behaviour) -> None:
    try:
        response = proxy.run(proxy.http.post("/v1/embeddings", json={"model": "m", "input": "x"},
                                             headers={"x-hostile": behaviour}))
    except httpx.TransportError:
        assert behaviour == "short"  # the head came and was relayed; the body broke off
    else:
        assert_openai_error(response, 502)
    assert set(in_flight(proxy).values()) == {0}


def test_the_sdk_sees_a_reset_as_an_api_error(proxy, api_key) -> None:
    api = proxy.openai(api_key)
    with pytest.raises(openai.APIStatusError) as failed:
        proxy.run(api.chat.completions.create(model="m", messages=[{"role": "user", "content": "reset me"}],
                                              extra_headers={"x-hostile": "reset"}))
    assert failed.value.status_code == 502
    assert set(in_flight(proxy).values()) == {0}


async def asgi_get(app, raw_path: bytes) -> tuple[int, bytes]:
    """One request straight into the ASGI app with this raw path: httpx would resolve the dots."""
    sent: list[dict] = []
    asked: list[bool] = []

    async def receive() -> dict:
        if asked:
            await asyncio.Event().wait()  # the client stays: a streaming response stops listening when done
        asked.append(True)
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    path = raw_path.decode("latin-1").split("?")[0]
    await app({"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
               "path": unquote(path), "raw_path": raw_path,
               "query_string": b"", "headers": [(b"x-hostile", b"ok")], "client": ("127.0.0.1", 1),
               "server": ("catcache", 80)}, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


@pytest.mark.parametrize("raw_path", [b"/v1/../control", b"/v1/%2e%2e/control", b"/v1/%2E%2E/%2e%2e/control",
                                      b"/v1/models/../../control", b"/v1/./../control"])
def test_pass_through_never_leaves_the_base_url(proxy, hostile, raw_path) -> None:
    hostile.paths.clear()
    status, body = proxy.run(asgi_get(proxy.app, raw_path))
    assert status == 404 and orjson_error(body)["code"] == "unknown_path"
    assert hostile.paths == [], f"the backend was asked for {hostile.paths}"


def test_pass_through_keeps_encoded_characters_in_the_path(proxy, hostile) -> None:
    hostile.paths.clear()
    status, _ = proxy.run(asgi_get(proxy.app, b"/v1/models/a%3Fb%23c%2Fd"))
    assert hostile.paths == ["/v1/models/a%3Fb%23c/d"]  # ? and # stay in the path; %2F was a / to the app


def orjson_error(body: bytes) -> dict:
    error = orjson.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


# -- only complete, successful answers are stored (finding 8) ---------------------------------

def ask_twice(proxy: InProcess, api_key: str, behaviour: str, stream: bool) -> tuple[httpx.Response, httpx.Response]:
    body = {"model": "m", "messages": [{"role": "user", "content": f"store? {behaviour} {stream} {api_key}"}],
            "stream": stream}
    headers = {"x-hostile": behaviour, "authorization": f"Bearer {api_key}"}
    first = proxy.run(proxy.http.post("/v1/chat/completions", json=body, headers=headers))
    second = proxy.run(proxy.http.post("/v1/chat/completions", json=body, headers={**headers, "x-hostile": "ok"}))
    return first, second


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("behaviour", ["length", "error200", "no-store", "private"])
def test_an_incomplete_or_unkeepable_answer_is_relayed_not_stored(proxy, api_key, behaviour, stream) -> None:
    first, second = ask_twice(proxy, api_key, behaviour, stream)
    assert first.status_code == 200 and first.headers["x-catcache"] == "miss"
    assert "x-catcache-key" not in first.headers or stream, "a key for an entry that was never stored"
    assert second.headers["x-catcache"] == "miss", f"a {behaviour} answer was stored and served again"
    if behaviour == "error200":
        assert first.json()["error"]["message"] == "overloaded"  # relayed as the backend sent it, stream or not
    assert set(in_flight(proxy).values()) == {0}


@pytest.mark.parametrize("stream", [False, True])
def test_a_complete_answer_is_stored_and_its_key_sent(proxy, api_key, stream) -> None:
    first, second = ask_twice(proxy, api_key, "ok", stream)
    assert first.headers["x-catcache"] == "miss" and len(first.headers["x-catcache-key"]) == 64
    assert second.headers["x-catcache"] == "hit-exact"


def test_a_stream_that_ends_without_done_is_cut_off_for_the_client(proxy, api_key) -> None:
    """The backend closes a close-delimited body after one event: a clean end of HTTP, not of the
    stream, so the client's stream must break off rather than end as if whole."""
    body = {"model": "m", "messages": [{"role": "user", "content": f"cut {api_key}"}], "stream": True}
    with pytest.raises(httpx.TransportError):
        proxy.run(proxy.http.post("/v1/chat/completions", json=body, headers={"x-hostile": "cut-stream"}))
    assert set(in_flight(proxy).values()) == {0}


# -- large requests stay off the event loop (finding 3) ---------------------------------------

def test_a_request_over_the_cached_size_passes_through_byte_for_byte(proxy, hostile, api_key) -> None:
    from catcache.proxy.pipeline import UNCACHED_BODY_BYTES

    raw = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": f"big {api_key} " + "x" * UNCACHED_BODY_BYTES}]})
    raw = raw.replace(b'{"model"', b'{ "model"', 1)  # a spelling a re-serialised body would not keep
    for _ in range(2):
        response = proxy.run(proxy.http.post("/v1/chat/completions", content=raw, headers={
            "x-hostile": "ok", "content-type": "application/json", "authorization": f"Bearer {api_key}"}))
        assert response.status_code == 200 and response.headers["x-catcache"] == "bypass"
    assert hostile.last_body == raw
    assert set(in_flight(proxy).values()) == {0}


def test_a_large_request_under_the_cached_size_is_cached(proxy, api_key) -> None:
    """Between OFF_LOOP_BYTES and UNCACHED_BODY_BYTES a request is parsed in a worker thread, and cached."""
    from catcache.proxy.exchange import OFF_LOOP_BYTES

    body = {"model": "m", "messages": [{"role": "user", "content": f"m{i} {api_key}"} for i in range(OFF_LOOP_BYTES // 40)]}
    assert len(orjson.dumps(body)) > OFF_LOOP_BYTES
    outcomes = [proxy.run(proxy.http.post("/v1/chat/completions", json=body, headers={"x-hostile": "ok"})).headers["x-catcache"]
                for _ in range(2)]
    assert outcomes == ["miss", "hit-exact"]
