"""`catcache serve` against clients that misbehave at the HTTP level (issue 21, finding 9): slow
clients are cut off, unknown routes and bugs answer in OpenAI's shape, the schema needs the admin
token, and a client that hangs up leaves no traceback in the log."""

from __future__ import annotations

import socket
import time

import httpx
import openai
import orjson
import pytest

from catcache.testing import ProxyProcess

TOKEN = "admin-token-for-serve-hardening"
CLIENT_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def proxy(module_proxy_factory) -> ProxyProcess:
    return module_proxy_factory(extra_args=["--client-timeout", str(CLIENT_TIMEOUT_S)],
                                env={"CATCACHE_ADMIN_TOKEN": TOKEN})


def connect(proxy: ProxyProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port))
    sock.settimeout(30)  # far beyond the client timeout: only a hang reaches it
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    """True once the proxy has closed the connection (reads end), False if it is still open after 30 s."""
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


@pytest.mark.parametrize("sent", [b"", b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n",
                                  b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"mo"])
def test_a_client_too_slow_to_send_its_request_is_disconnected(proxy, sent) -> None:
    with connect(proxy) as sock:
        sock.sendall(sent)
        assert closed_by_server(sock)


def test_a_keep_alive_client_trickling_its_next_request_is_disconnected(proxy) -> None:
    with connect(proxy) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        for line in (b"GET /healthz HTTP/1.1\r\n", b"host: x\r\n", b"x-a: 1\r\n", b"x-b: 2\r\n"):
            try:
                sock.sendall(line)
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(CLIENT_TIMEOUT_S / 2)
        assert closed_by_server(sock)


def test_a_prompt_client_is_served_on_the_same_proxy(proxy, api_key) -> None:
    api = openai.OpenAI(base_url=proxy.base_url, api_key=api_key, max_retries=0)
    answer = api.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "hello"}])
    assert answer.choices[0].message.content


@pytest.mark.parametrize("method, path, status", [("GET", "/nope", 404), ("POST", "/healthz", 405),
                                                  ("GET", "/v2/models", 404)])
def test_routing_errors_are_in_openai_shape(proxy, method, path, status) -> None:
    response = httpx.request(method, proxy.url + path)
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]


def test_the_schema_needs_the_admin_token(proxy) -> None:
    assert httpx.get(proxy.url + "/openapi.json").status_code == 401
    schema = httpx.get(proxy.url + "/openapi.json", headers={"authorization": f"Bearer {TOKEN}"})
    assert schema.status_code == 200 and "/admin/purge" in schema.json()["paths"]


def test_a_client_hanging_up_mid_body_leaves_no_traceback(proxy) -> None:
    offset = proxy.log_path.stat().st_size
    for _ in range(5):
        with connect(proxy) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 5000\r\n"
                         b"content-type: application/json\r\n\r\n" + b'{"model": "m", "messages": [' + b" " * 1000)
        with connect(proxy) as sock:  # and one cut by the client timeout mid-body
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 5000\r\n\r\n{")
            assert closed_by_server(sock)
    assert httpx.get(proxy.url + "/healthz").status_code == 200
    log = proxy.log_path.read_bytes()[offset:].decode(errors="replace")
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]


@pytest.mark.parametrize("sent", [b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-bad: a\x00b\r\n\r\n", b"\x16\x03\x01 not http\r\n\r\n",
                                  b"GET /healthz HTTP/9.9\r\n\r\n"])
def test_malformed_http_is_a_400_in_openai_shape(proxy, sent) -> None:
    with connect(proxy) as sock:
        sock.sendall(sent)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head, answer[:300]
    assert set(orjson.loads(body)["error"]) == {"message", "type", "param", "code"}
