"""Helpers for tests and benchmarks: free ports, waiting on HTTP, `catcache serve` as a child, and a
document store of its own on the test Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

import httpx
import redis
from redis.asyncio import Redis, RedisCluster
from redis.cluster import ClusterNode

from catcache.store.connect import cluster_seeds, connect, is_cluster_url
from catcache.store.documents import DocumentStore
from catcache.store.embedded import die_with_parent

StoreScenario = Callable[[DocumentStore, Redis | RedisCluster, str], Awaitable[None]]

START_TIMEOUT = 180.0  # a loaded 2-core machine can take minutes to load torch and the model
STOP_TIMEOUT = 15.0


def free_port() -> int:
    """A loopback port nobody listens on right now (another process could still take it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = START_TIMEOUT, process: subprocess.Popen[bytes] | None = None) -> None:
    """Poll GET `url` until it answers 200; give up early if `process` exits meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with status {process.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer 200 within {timeout:g} s")
        time.sleep(0.05)


class ProxyProcess:
    """`catcache serve` as a subprocess on a free port; its output goes to `log_path`."""

    def __init__(
        self,
        backend_url: str | None,
        policies: Path | str,
        data_dir: Path,
        redis_url: str | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
    ):
        self.port = free_port()
        self.data_dir = Path(data_dir)
        self.log_path = log_path or self.data_dir.with_name(self.data_dir.name + ".log")
        self.args = [
            sys.executable, "-m", "catcache", "serve",
            *(["--backend", backend_url] if backend_url else []),  # None: the policy's backends
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--data-dir", str(self.data_dir),
            "--policies", str(policies),
            *(["--redis", redis_url] if redis_url else []),
            *extra_args,
        ]  # fmt: skip
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def start(self, timeout: float = START_TIMEOUT) -> ProxyProcess:
        """Start and wait for /healthz; on failure stop it and raise with the end of its log."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.args,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent(),  # a killed test run leaves no proxy behind
            )
        try:
            wait_http(f"{self.url}/healthz", timeout, self.process)
        except (RuntimeError, TimeoutError) as exc:
            self.stop()
            raise RuntimeError(f"catcache serve did not become ready: {exc}\n{self.log_tail()}") from None
        return self

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout`; idempotent."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> ProxyProcess:
        """Stop and start again with the same arguments, port and data dir."""
        self.stop()
        return self.start()

    def log_tail(self, lines: int = 40) -> str:
        """The last lines this run wrote (stdout and stderr together)."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_offset)
                text = log.read().decode(errors="replace")
        except OSError:
            return "(no output)"
        return "\n".join(text.splitlines()[-lines:]) or "(no output)"


def run_with_store(redis_url: str, scenario: StoreScenario) -> None:
    """Run `scenario` with a store on its own client and a category no other test uses."""
    async def main() -> None:
        redis = connect(redis_url)
        try:
            await scenario(DocumentStore(redis, origin=uuid.uuid4().hex), redis, f"cat-{uuid.uuid4().hex[:8]}")
        finally:
            await redis.aclose()

    asyncio.run(main())


def sync_client(url: str) -> redis.Redis | redis.RedisCluster:
    """A blocking client for `url` (one server or, with the cluster scheme, a Redis Cluster)."""
    if is_cluster_url(url):
        first, others = cluster_seeds(url)
        return redis.RedisCluster.from_url(first, startup_nodes=[ClusterNode(h, p) for h, p in others])
    return redis.Redis.from_url(url)
