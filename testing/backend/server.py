"""The fake backend served from a background thread of the calling process, on a free loopback port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Mapping, Sequence

import uvicorn

from .app import create_app
from .state import DEFAULT_MODELS, BackendState


class TestBackend:
    """The backend in a background thread of this process, on a free loopback port."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        think_ms: float = 0,
        tokens_per_s: float = 0,
        models: Sequence[str] = DEFAULT_MODELS,
        port: int = 0,
        prefix_ms: float = 0,
        prefix_slots: int = 0,
        slots: int = 0,
        replies: Mapping[str, str] | None = None,
        groups: Mapping[str, str] | None = None,
    ):
        self.app = create_app(think_ms, tokens_per_s, models, prefix_ms, prefix_slots, slots, replies, groups)
        self.state: BackendState = self.app.state.backend
        self._port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def start(self) -> str:
        """Serve until stop(); returns the base URL for an OpenAI client (ending in /v1)."""
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._port))
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app, log_config=None, log_level="warning", access_log=False, timeout_graceful_shutdown=1
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="test-backend", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test backend did not start")
            time.sleep(0.01)
        return self.base_url

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(10)
        self._server = self._thread = None

    def calls(self, path: str | None = None) -> int:
        """Calls to `path` (e.g. "/v1/chat/completions"), or to any path."""
        return self.state.calls(path)

    def reset(self) -> None:
        self.state.reset()

    def __enter__(self) -> TestBackend:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
