"""A fuzzer for the whole proxy: catcache served by uvicorn (catcache's own HTTP protocol) in a
thread of this process, in front of the hostile backend, and clients that mutate headers (bytes
beyond ASCII, duplicates, sizes, encodings), bodies (broken JSON, wrong types, depth, size) and
the backend's behaviour (resets, half-closed sockets, garbage, slow bytes, cut streams).

What it checks, per request: no 500 in plain text, every error status a JSON body in OpenAI's
shape, a 200 stream either complete or cut off (never ended cleanly without `[DONE]`); and once
the load stops, every gauge back to 0: each backend's and replica's in-flight count, the single
flights, the hit counter's queue, uvicorn's connections and request tasks.
"""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import orjson
import uvicorn
from fastapi import FastAPI

from catcache.proxy.protocol import http_protocol

from catcache.testing.hostile import BEHAVIOURS

KEYS = ["sk-fuzz-a", "sk-fuzz-b", "sk-fuzz-ü", "sk-fuzz-d", ""]
QUESTIONS = ["What is the capital of France?", "What is 2³?", "What is 23?", "Explain TCP in one line.",
             "```python\ndef f(x):\n    return x + 1\n```\nWhat does f do?", "What is the weather in Oslo?",
             "Add ½ cup", "Add 1⁄2 cup", "Ｈｅｌｌｏ", "my password is hunter2"]
CACHE_CONTROL = ["no-store", "no-store;", "no-cache", "No-Cache, max-age=0", "private", ";;", "no-store,no-cache", "x" * 300]
CATEGORIES = ["code", "weather", "strict", "tiny", "public", "private", "default", "nope", "ü", ""]


@dataclass
class FuzzReport:
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    plain_500s: list[str] = field(default_factory=list)
    bad_shape: list[str] = field(default_factory=list)        # an error status without OpenAI's JSON shape
    clean_truncations: list[str] = field(default_factory=list)  # a 200 stream ended without [DONE], cleanly
    cut_streams: int = 0                                      # 200 streams broken off (the backend broke)
    dropped: Counter[str] = field(default_factory=Counter)    # connections closed with no answer, by cause
    behaviours: Counter[str] = field(default_factory=Counter)
    gauges: dict[str, int] = field(default_factory=dict)      # after the load stopped
    seconds: float = 0.0

    @property
    def failures(self) -> list[str]:
        leaked = [f"gauge {name} = {value}" for name, value in self.gauges.items() if value]
        unexplained = [f"dropped: {cause} x{n}" for cause, n in self.dropped.items() if not cause.startswith("raw")]
        return self.plain_500s + self.bad_shape + self.clean_truncations + leaked + unexplained

    def summary(self) -> dict:
        return {"requests": self.requests, "seconds": round(self.seconds, 1), "statuses": dict(sorted(self.statuses.items())),
                "plain_500s": len(self.plain_500s), "bad_shape": len(self.bad_shape),
                "clean_truncations": len(self.clean_truncations), "cut_streams": self.cut_streams,
                "dropped": dict(self.dropped), "backend_behaviours": dict(self.behaviours), "gauges_after": self.gauges,
                "failures": self.failures[:20]}


class ServedApp:
    """The app under uvicorn with catcache's HTTP protocol, in a thread with its own event loop."""

    def __init__(self, app: FastAPI, client_timeout: float = 5.0):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.app = app
        config = uvicorn.Config(app, log_config=None, access_log=False, http=http_protocol(client_timeout),
                                loop="asyncio", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self, sock: socket.socket) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self.server.serve(sockets=[sock]))

    def __enter__(self) -> ServedApp:
        self._thread.start()
        deadline = time.monotonic() + 300
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the proxy did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(30)

    def server_loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the proxy runs on (uvicorn's, in the server thread)."""
        return self._loop

    def gauges(self) -> dict[str, int]:
        state = self.app.state.proxy
        gauges = {"uvicorn connections": len(self.server.server_state.connections),
                  "uvicorn tasks": len(self.server.server_state.tasks),
                  "single flights": len(state.flights._flights),
                  "hit counter queue": len(self.app.state.pipeline.hits._pending)}
        for name, client in state.live.backends.items():
            gauges[f"{name} in flight"] = client.in_flight
            for replica in client.replicas.replicas:
                gauges[f"{name} replica {replica.url} in flight"] = replica.in_flight
        return gauges

    def settled_gauges(self, within_s: float = 15.0) -> dict[str, int]:
        """The gauges once they are all 0, or as they are after `within_s`."""
        deadline = time.monotonic() + within_s
        while any((gauges := self.gauges()).values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        return gauges


class Fuzzer:
    def __init__(self, url: str, seed: int, admin_token: str | None = None, max_body_bytes: int = 256 * 1024):
        self.url = url
        self.random = random.Random(seed)
        self.admin_token = admin_token
        self.max_body_bytes = max_body_bytes
        self.report = FuzzReport()

    async def run(self, requests: int, concurrency: int = 16) -> FuzzReport:
        started = time.perf_counter()
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(requests):
            queue.put_nowait(i)
        # Idle connections expire before uvicorn's keep-alive timeout (5 s) closes them, so a request
        # never races the server's close on a connection it reuses.
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=2.0)
        async with httpx.AsyncClient(base_url=self.url, timeout=30, limits=limits) as http:
            await asyncio.gather(*(self._worker(http, queue) for _ in range(concurrency)))
        self.report.seconds = time.perf_counter() - started
        return self.report

    async def _worker(self, http: httpx.AsyncClient, queue: asyncio.Queue[int]) -> None:
        while not queue.empty():
            queue.get_nowait()
            self.report.requests += 1
            if self.random.random() < 0.12:
                await self._raw(self._raw_request())
            else:
                await self._send(http, *self._request())

    # -- requests ------------------------------------------------------------------------------

    def _request(self) -> tuple[str, str, list[tuple[bytes, bytes]], bytes, str]:
        r = self.random
        kind = r.choices(["chat", "completions", "pass", "admin"], [55, 15, 18, 12])[0]
        behaviour = r.choice(BEHAVIOURS + ("random",))
        stream = r.random() < 0.35
        headers: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json")]
        if behaviour != "random":
            headers.append((b"x-hostile", behaviour.encode()))
        headers += self._credentials()
        if r.random() < 0.3:
            headers.append((b"cache-control", r.choice(CACHE_CONTROL).encode()))
        if r.random() < 0.1:
            headers.append((b"pragma", b"no-cache"))
        if r.random() < 0.2:
            headers.append((b"x-catcache-category", r.choice(CATEGORIES).encode()))
        if r.random() < 0.2:
            headers.append((b"x-note", bytes(r.randrange(0x80, 0x100) for _ in range(r.randint(1, 40)))))
        if r.random() < 0.05:
            headers.append((b"x-big", b"b" * r.choice([1024, 8192, 30_000])))
        if r.random() < 0.05:
            headers.append((b"content-encoding", r.choice([b"gzip", b"br", b"identity", b"\xff"])))
        if kind == "admin":
            method, path = r.choice([("GET", "/stats"), ("GET", "/metrics"), ("POST", "/admin/purge"), ("GET", "/openapi.json"),
                                     ("POST", "/admin/reload"), ("GET", "/healthz"), ("GET", "/nope"), ("POST", "/v1/cache/feedback"),
                                     ("DELETE", "/admin/purge"), ("GET", "/reports")])
            if self.admin_token and r.random() < 0.5:
                headers.append((b"authorization", b"Bearer " + self.admin_token.encode()))
            body = self._mutated({"key": "x" * r.randint(0, 64), "correct": r.random() < 0.5, "category": r.choice(CATEGORIES)})
            return method, path, headers, body, behaviour
        if kind == "pass":
            method = r.choice(["GET", "POST", "PUT", "DELETE", "PATCH"])
            path = r.choice(["/v1/models", "/v1/embeddings", "/v1/../control", "/v1/%2e%2e/control", "/v1/a%3Fb", "/v1/ü",
                             "/v1/models/x/../../y", "/v1/" + "a" * 3000])
            return method, path, headers, self._mutated({"model": "m", "input": r.choice(QUESTIONS)}), behaviour
        question = r.choice(QUESTIONS) + (f" {r.randint(0, 30)}" if r.random() < 0.5 else "")
        if kind == "chat":
            body: dict = {"model": "m", "messages": [{"role": "user", "content": question}], "stream": stream}
        else:
            body = {"model": "m", "prompt": question, "stream": stream}
        if r.random() < 0.2:
            body["max_tokens"] = r.choice([1, 5, 100])
        if r.random() < 0.05:
            body["n"] = 2
        if stream and r.random() < 0.3:
            body["stream_options"] = r.choice([{"include_usage": True}, {"include_usage": False}, "yes", None])
        path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
        return "POST", path, headers, self._mutated(body), behaviour

    def _credentials(self) -> list[tuple[bytes, bytes]]:
        r = self.random
        out = []
        for name in r.sample([b"authorization", b"api-key", b"x-api-key"], r.randint(0, 2)):
            key = r.choice(KEYS).encode()
            out.append((name, (b"Bearer " + key).strip() if name == b"authorization" else key))
            if r.random() < 0.1:
                out.append((name, r.choice(KEYS).encode()))  # the same header twice
        return out

    def _mutated(self, body: dict) -> bytes:
        r = self.random
        raw = orjson.dumps(body)
        mutation = r.choices(["none", "truncate", "bytes", "utf8", "deep", "type", "huge", "big-number", "empty"],
                             [70, 5, 4, 3, 3, 6, 3, 3, 3])[0]
        if mutation == "truncate":
            return raw[:r.randint(0, len(raw))]
        if mutation == "bytes":
            return r.randbytes(r.randint(1, 200))
        if mutation == "utf8":
            return raw.replace(b"?", b"\xff\xfe", 1)
        if mutation == "deep":
            depth = r.choice([100, 1000, 100_000])
            return raw[:-1] + b', "deep": ' + b"[" * depth + b"]" * depth + b"}"
        if mutation == "type":
            key = r.choice(list(body))
            return orjson.dumps({**body, key: r.choice([None, 1, -1, 1.5, "x", [], {}, [None], True])})
        if mutation == "huge":
            size = r.choice([self.max_body_bytes // 2, self.max_body_bytes + 1])
            return orjson.dumps({**body, "messages": [{"role": "user", "content": "y" * size}]})
        if mutation == "big-number":
            return raw[:-1] + b', "temperature": 1e400, "seed": 123456789012345678901234567890}'
        if mutation == "empty":
            return b""
        return raw

    def _raw_request(self) -> bytes:
        """Bytes httpx would refuse to send: NULs and bare CRs in headers, bad request lines,
        duplicate lengths, a body shorter than declared (a client that hangs up)."""
        r = self.random
        head = r.choice([
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-a: a\x00b\r\ncontent-length: 2\r\n\r\n{}",
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n{}",
            b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-a: \xff\xfe\x80\r\n\r\n",
            b"GET /v1/../control HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            b"GET /v1/./models HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 9000\r\n\r\n{\"model\": ",
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"GET / HTTP/1.1\r\n" + b"x-h: v\r\n" * 2000 + b"\r\n",
            b"BREW /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        ])
        return head

    # -- sending and checking ------------------------------------------------------------------

    async def _send(self, http: httpx.AsyncClient, method: str, path: str, headers: list[tuple[bytes, bytes]],
                    body: bytes, behaviour: str) -> None:
        what = f"{method} {path} backend={behaviour} body={body[:80]!r}"
        self.report.behaviours[behaviour] += 1
        try:
            async with http.stream(method, path, headers=headers, content=body if method != "GET" else None) as response:
                status = response.status_code
                self.report.statuses[status] += 1
                try:
                    content = await response.aread()
                except httpx.TransportError:
                    self._cut(status, response, what)
                    return
        except httpx.TransportError as exc:
            self.report.dropped[f"{type(exc).__name__} ({behaviour})"] += 1
            return
        streamed = path in ("/v1/chat/completions", "/v1/completions") and b'"stream":true' in body
        self._check(status, response.headers.get("content-type", ""), content, what, streamed)

    def _cut(self, status: int, response: httpx.Response, what: str) -> None:
        """A body broken off: right when a backend broke a 200 stream (or any relayed body), or for
        a 413, whose connection is closed while the client is still sending the rest."""
        if status == 200:
            self.report.cut_streams += 1
        elif status == 413:
            self.report.dropped["raw 413 closed mid-upload"] += 1
        else:
            self.report.bad_shape.append(f"{status} body broken off: {what}")

    def _check(self, status: int, media: str, content: bytes, what: str, streamed: bool = False) -> None:
        """`streamed`: the client asked catcache for a stream (a relayed body is the backend's own)."""
        if status >= 400:
            if status == 500 and not media.startswith("application/json"):
                self.report.plain_500s.append(f"{content[:200]!r}: {what}")
                return
            if not self._openai_error(media, content):
                self.report.bad_shape.append(f"{status} {media} {content[:200]!r}: {what}")
        elif streamed and status == 200 and media.startswith("text/event-stream") and b"data: [DONE]" not in content:
            self.report.clean_truncations.append(f"{content[-200:]!r}: {what}")

    @staticmethod
    def _openai_error(media: str, content: bytes) -> bool:
        if not media.startswith("application/json"):
            return False
        try:
            error = orjson.loads(content).get("error")
        except (orjson.JSONDecodeError, AttributeError):
            return False
        return isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}

    async def _raw(self, data: bytes) -> None:
        self.report.behaviours["raw"] += 1
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", int(self.url.rsplit(":", 1)[1]))
        except OSError as exc:
            self.report.dropped[f"raw connect {type(exc).__name__}"] += 1
            return
        try:
            writer.write(data)
            await writer.drain()
            if self.random.random() < 0.3:
                return  # hang up without waiting
            answer = await asyncio.wait_for(reader.read(), 30)
        except (OSError, asyncio.TimeoutError) as exc:
            self.report.dropped[f"raw {type(exc).__name__}"] += 1
            return
        finally:
            writer.close()
        if not answer:
            self.report.dropped["raw closed without an answer"] += 1  # a body shorter than declared, cut by the client timeout
            return
        head, _, body = answer.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0
        self.report.statuses[status] += 1
        media = next((line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-type:")), "")
        self._check(status, media, body, f"raw {data[:60]!r}")


@contextmanager
def fuzzing_target(app: FastAPI, client_timeout: float = 5.0) -> Iterator[ServedApp]:
    with ServedApp(app, client_timeout) as served:
        yield served
