"""`catcache serve` as a child process on a free port, for tests and benchmarks that drive the
proxy over HTTP as its users do, and waiting for a server to answer."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from catcache.process import die_with_parent, free_port, stop_process

DEFAULT_POLICIES = Path(__file__).resolve().parents[1] / "policies.yaml"  # the policy catcache ships
START_TIMEOUT = 180.0  # a loaded 2-core machine can take minutes to load torch and the model
STOP_TIMEOUT = 15.0


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
        stop_process(process, timeout)

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
