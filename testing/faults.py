"""What the fault tests put around catcache: load through the openai SDK, a Redis that can be
killed and restarted, a TCP proxy that stalls Redis, and a backend process that can be killed."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import redis

from catcache.process import die_with_parent
from catcache.store.embedded import redis_server_path

from .proxy import free_port, wait_http


@dataclass
class Result:
    outcome: str | None     # x-catcache, when an answer came
    stream: bool
    warm: bool              # a question cached before the load began
    error: Exception | None
    at: float               # monotonic time the request ended


class Load:
    """`clients` threads asking, through the openai SDK, cached questions (hits) and fresh ones
    (misses), every `stream_every`-th as a stream, until the block ends. Keeps every result."""

    def __init__(self, base_url: str, warm: list[str], clients: int = 4, stream_every: int = 3,
                 api_key: str = "sk-load"):
        self.base_url, self.warm, self.clients, self.stream_every = base_url, warm, clients, stream_every
        self.api_key = api_key
        self.results: list[Result] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> Load:
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(self.clients)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _run(self, worker: int) -> None:
        api = openai.OpenAI(base_url=self.base_url, api_key=self.api_key, max_retries=0, timeout=30)
        sent = 0
        while not self._stop.is_set():
            sent += 1
            warm = sent % 2 == 0
            question = self.warm[sent % len(self.warm)] if warm else f"Fresh question {uuid.uuid4().hex}?"
            self.results.append(ask(api, question, stream=sent % self.stream_every == 0, warm=warm))

    def errors(self) -> list[Result]:
        return [r for r in self.results if r.error is not None]

    def outcomes(self) -> set[str | None]:
        return {r.outcome for r in self.results}


def ask(api: openai.OpenAI, question: str, *, stream: bool = False, warm: bool = False,
        headers: dict[str, str] | None = None) -> Result:
    """One chat request; the answer's outcome, or the error the client saw."""
    try:
        raw = api.chat.completions.with_raw_response.create(
            model="test-model", messages=[{"role": "user", "content": question}], stream=stream,
            extra_headers=headers)
        parsed = raw.parse()
        if stream:
            text = "".join(c.choices[0].delta.content or "" for c in parsed if c.choices)
        else:
            text = parsed.choices[0].message.content
        assert text, "an empty answer"
        return Result(raw.headers.get("x-catcache"), stream, warm, None, time.monotonic())
    except (openai.OpenAIError, httpx.HTTPError, AssertionError) as exc:
        return Result(None, stream, warm, exc, time.monotonic())


def doc_keys(client: redis.Redis) -> set[bytes]:
    return set(client.scan_iter("cc:doc:*", count=1000))


def wait_ping(url: str, timeout: float) -> float:
    """Seconds until Redis at `url` answers PING; fails after `timeout`."""
    started = time.monotonic()
    client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
    while True:
        try:
            if client.ping():
                return time.monotonic() - started
        except redis.RedisError:
            pass
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{url} did not answer PING within {timeout} s")
        time.sleep(0.01)


class Killable:
    """A child server on a fixed port that a test can SIGKILL and start again."""

    process: subprocess.Popen[bytes] | None = None

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


class RedisProcess(Killable):
    """A redis-server with an append-only file in `data_dir`, that a test can kill and start again."""

    def __init__(self, data_dir: Path):
        self.data_dir, self.port = data_dir, free_port()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [redis_server_path(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
             "--appendonly", "yes", "--save", ""],
            stdout=subprocess.DEVNULL, preexec_fn=die_with_parent())
        wait_ping(self.url, 10)
        return self



class BackendProcess(Killable):
    """`python -m catcache.testing.backend` in its own process on a fixed port, so it can be killed and restarted."""

    def __init__(self, think_ms: float = 0, tokens_per_s: float = 0):
        self.port = free_port()
        self.args = [sys.executable, "-m", "catcache.testing.backend", "--port", str(self.port), "--think-ms", str(think_ms),
                     "--tokens-per-s", str(tokens_per_s)]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> BackendProcess:
        self.process = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, preexec_fn=die_with_parent())
        wait_http(f"{self.base_url}/models", process=self.process)
        return self



class StallingProxy:
    """A TCP relay to `target_port` that, while `stalled` is set, holds every byte in both directions:
    Redis as seen by a client when it is slow (a long fork, a swapped-out page, a saturated link)."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.stalled = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                while self.stalled.is_set() and not self._closed:
                    time.sleep(0.01)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
