"""A backend that misbehaves on purpose, for the fuzzer and the fault tests: raw TCP, one
request per connection, the behaviour picked per request.

A request's `x-hostile` header names the behaviour; without it, the server picks one at random
(seeded) from `BEHAVIOURS`. Every answer that is HTTP at all says `Connection: close`.

- `ok`: a complete chat completion (streamed when asked); `length`: one cut at max tokens;
- `error200`: a 200 whose body is a top-level `error`; `no-store` / `private`: a good answer
  marked `Cache-Control: no-store` / `private`;
- `reset`: the connection reset (RST) once the request is read; `close`: closed without a byte;
- `half`: the write side shut (FIN), the socket held open a moment, then closed;
- `garbage`: random bytes, then closed; `bad-json`: a 200 `application/json` that is not JSON;
- `short`: a head promising more body than is sent; `slow`: a good answer a few bytes at a time;
- `cut-stream`: a stream cut off after its first event.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import struct
import threading
import time
from collections import Counter

BEHAVIOURS = ("ok", "length", "error200", "no-store", "private", "reset", "close", "half", "garbage",
              "bad-json", "short", "slow", "cut-stream")


class HostileBackend:
    """The server in a background thread with its own event loop, on a free loopback port."""

    def __init__(self, seed: int = 0, slow_s: float = 0.2):
        self.random = random.Random(seed)
        self.slow_s = slow_s
        self.seen: Counter[str] = Counter()  # behaviour -> requests answered with it
        self.last_headers: dict[bytes, bytes] = {}
        self.last_body = b""
        self.paths: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> HostileBackend:
        started = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(asyncio.start_server(self._answer, "127.0.0.1", 0))
            self.port = self._server.sockets[0].getsockname()[1]
            started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, name="hostile-backend", daemon=True)
        self._thread.start()
        started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        def close() -> None:
            assert self._server is not None
            self._server.close()
            self._loop.stop()

        self._loop.call_soon_threadsafe(close)
        assert self._thread is not None
        self._thread.join(10)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            self.paths.append(lines[0].split(b" ")[1].decode("latin-1"))
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:] if line)}
            self.last_headers = headers
            body = self.last_body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
            request = json.loads(body) if body else {}
            wanted = headers.get(b"x-hostile", b"").decode()
            behaviour = wanted if wanted in BEHAVIOURS else self.random.choice(BEHAVIOURS)
            self.seen[behaviour] += 1
            await self._behave(behaviour, request if isinstance(request, dict) else {}, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, RecursionError):
            pass
        finally:
            writer.close()

    async def _behave(self, behaviour: str, request: dict, writer: asyncio.StreamWriter) -> None:
        sock: socket.socket = writer.transport.get_extra_info("socket")
        stream = request.get("stream") is True
        if behaviour == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        elif behaviour == "close":
            writer.transport.abort()
        elif behaviour == "half":
            writer.write_eof()
            await asyncio.sleep(0.05)
        elif behaviour == "garbage":
            writer.write(self.random.randbytes(self.random.randint(1, 300)))
            await writer.drain()
        elif behaviour == "bad-json":
            writer.write(_head(200, 9, "application/json") + b"{not json")
        elif behaviour == "short":
            writer.write(_head(200, 500, "application/json") + b'{"id": "x", "choi')
            await writer.drain()
        elif behaviour == "error200":
            writer.write(_json(200, {"error": {"message": "overloaded", "type": "server_error", "param": None,
                                               "code": None}}))
        elif behaviour == "cut-stream":
            events = _events(request, "stop")
            writer.write(_head(200, None, "text/event-stream") + events[0])
            await writer.drain()
        elif behaviour == "slow":
            payload = _json(200, _completion(request, "stop")) if not stream else _stream(request, "stop")
            for i in range(0, len(payload), max(1, len(payload) // 8)):
                writer.write(payload[i:i + max(1, len(payload) // 8)])
                await writer.drain()
                await asyncio.sleep(self.slow_s / 8)
        else:
            finish = "length" if behaviour == "length" else "stop"
            extra = {"cache-control": behaviour} if behaviour in ("no-store", "private") else {}
            writer.write(_stream(request, finish, extra) if stream else _json(200, _completion(request, finish), extra))
        await writer.drain()


def _head(status: int, length: int | None, media: str, extra: dict[str, str] | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"content-type: {media}", "connection: close"]
    if length is not None:
        lines.append(f"content-length: {length}")
    lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _json(status: int, body: dict, extra: dict[str, str] | None = None) -> bytes:
    payload = json.dumps(body).encode()
    return _head(status, len(payload), "application/json", extra) + payload


def _question(request: dict) -> str:
    messages = request.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        return str(messages[-1].get("content"))[:80]
    return str(request.get("prompt"))[:80]


def _completion(request: dict, finish: str) -> dict:
    text = f"hostile answer to: {_question(request)}"
    if "messages" in request:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        kind = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        kind = "text_completion"
    return {"id": "h-1", "object": kind, "created": int(time.time()), "model": str(request.get("model")),
            "choices": [choice], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}


def _events(request: dict, finish: str) -> list[bytes]:
    chat = "messages" in request
    kind = "chat.completion.chunk" if chat else "text_completion"
    envelope = {"id": "h-1", "object": kind, "created": int(time.time()), "model": str(request.get("model"))}

    def chunk(piece: str | None, reason: str | None) -> bytes:
        if chat:
            delta = {"role": "assistant", "content": piece} if piece is not None else {}
            choice = {"index": 0, "delta": delta, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": piece or "", "finish_reason": reason, "logprobs": None}
        return b"data: " + json.dumps(dict(envelope, choices=[choice])).encode() + b"\n\n"

    usage = b"data: " + json.dumps(dict(envelope, choices=[], usage={
        "prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7})).encode() + b"\n\n"
    return [chunk("hostile ", None), chunk(f"answer to: {_question(request)}", None), chunk(None, finish), usage,
            b"data: [DONE]\n\n"]


def _stream(request: dict, finish: str, extra: dict[str, str] | None = None) -> bytes:
    return _head(200, None, "text/event-stream", extra) + b"".join(_events(request, finish))
