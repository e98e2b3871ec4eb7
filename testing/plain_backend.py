"""The test backend's chat and completions on Python's `http.server`: a plain HTTP/1.1 server.

uvicorn sets TCP_NODELAY and writes a response in one go; many servers do neither. This one
answers like `catcache.testing.backend` (same answers, same stream chunks) from a ThreadingHTTPServer with
keep-alive, writing the head and the body of each response separately and leaving Nagle's
algorithm on, so a benchmark or test in front of it sees the stalls such a server can cause.

Run it alone with `python -m catcache.testing.plain_backend --port 8000`.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .backend import answers as a
from .backend.app import models_page
from .backend.state import BackendState


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.rstrip("/") != "/v1/models":
            return self._json(404, {"error": {"message": "not found", "type": "invalid_request_error",
                                              "param": None, "code": "404"}})
        self._json(200, models_page(self.server.state.models))

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"{}")
        if self.path != "/v1/chat/completions":
            return self._json(404, {"error": {"message": "only chat completions", "type": "invalid_request_error",
                                              "param": None, "code": "404"}})
        state = self.server.state
        state.count(self.path)
        number = state.next_answer()
        messages = body.get("messages") or []
        answer = a.chat_answer(0, number, a.last_user_text(messages), None, body.get("max_tokens"))
        usage = a.usage(a.prompt_tokens(messages), [answer])
        envelope = {"id": f"chatcmpl-{number}", "created": int(time.time()), "model": body.get("model", "")}
        time.sleep(state.think_s)
        if not body.get("stream"):
            return self._json(200, {**envelope, "object": "chat.completion", "usage": usage, "choices": [
                {"index": 0, "message": a.message(answer), "logprobs": None, "finish_reason": answer.finish_reason}]})
        chunk = {**envelope, "object": "chat.completion.chunk"}
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        events = [a.chat_payload(answer, a.opening_delta(answer)),
                  *(a.chat_payload(answer, a.piece_delta(answer, piece)) for piece in answer.pieces),
                  a.chat_payload(answer, {}, answer.finish_reason)]
        for payload in events:
            self._chunk(a.sse({**chunk, "choices": [payload]}))
        if (body.get("stream_options") or {}).get("include_usage"):
            self._chunk(a.sse({**chunk, "choices": [], "usage": usage}))
        self._chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _json(self, status: int, document: dict) -> None:
        data = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()  # the head goes out in one write, the body in another
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, think_ms: float):
        super().__init__(("127.0.0.1", port), _Handler)
        self.state = BackendState(think_ms)


class PlainBackend:
    """The server in a background thread of this process, on a free loopback port."""

    def __init__(self, think_ms: float = 0, port: int = 0):
        self._server = _Server(port, think_ms)
        self.state = self._server.state
        self._thread = threading.Thread(target=self._server.serve_forever, name="plain-backend", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def calls(self, path: str | None = None) -> int:
        return self.state.calls(path)

    def __enter__(self) -> PlainBackend:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--think-ms", type=float, default=0)
    args = parser.parse_args()
    _Server(args.port, args.think_ms).serve_forever()


if __name__ == "__main__":
    main()
