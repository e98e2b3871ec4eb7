import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from catcache.store.embedded import DataDirInUse, EmbeddedRedis, default_data_dir


def test_starts_and_answers_ping(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as server:
        assert server.url.startswith("redis://127.0.0.1:") and server.url.endswith("/0")
        assert redis.Redis.from_url(server.url).ping()
        assert server.start() == server.url  # starting twice is harmless


def test_data_survives_a_restart_on_the_same_dir(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as server:
        redis.Redis.from_url(server.url).set("answer", "42")
    assert (tmp_path / "redis" / "appendonly.aof").exists()
    with EmbeddedRedis(tmp_path) as server:
        assert redis.Redis.from_url(server.url).get("answer") == b"42"


def test_second_instance_on_the_same_dir_is_refused(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path):
        with pytest.raises(DataDirInUse) as refused:
            EmbeddedRedis(tmp_path).start()
    assert refused.value.pid == os.getpid()
    assert str(tmp_path) in str(refused.value) and str(os.getpid()) in str(refused.value)


def test_stop_ends_the_child_and_frees_the_dir(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path)
    server.start()
    pid = server.pid
    assert pid is not None
    server.stop()
    server.stop()  # idempotent
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with EmbeddedRedis(tmp_path) as again:
        assert redis.Redis.from_url(again.url).ping()


def test_a_failed_start_says_why(tmp_path: Path) -> None:
    (tmp_path / "redis").mkdir()
    (tmp_path / "redis" / "appendonly.aof").write_text("not an append-only file\n")
    with pytest.raises(RuntimeError, match="redis-server exited") as failed:
        EmbeddedRedis(tmp_path).start()
    assert "append only file" in str(failed.value).lower()
    with EmbeddedRedis(tmp_path / "other"):  # the failed start released its lock and its child
        pass


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux only")
def test_redis_dies_with_a_killed_parent(tmp_path: Path) -> None:
    script = "import sys, time; from catcache.store.embedded import EmbeddedRedis;" \
        "print(EmbeddedRedis(sys.argv[1]).start(), flush=True); time.sleep(60)"  # fmt: skip
    with subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE) as parent:
        assert parent.stdout is not None
        url = parent.stdout.readline().decode().strip()
        redis.Redis.from_url(url).set("kept", "yes")
        parent.send_signal(signal.SIGKILL)

    # The orphan still holds the lock while it writes its AOF out; start() waits for it to exit.
    with EmbeddedRedis(tmp_path) as again:
        assert redis.Redis.from_url(again.url).get("kept") == b"yes"
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()


def test_default_data_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_data_dir() == tmp_path / "catcache"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_data_dir() == Path.home() / ".local" / "share" / "catcache"


def test_a_killed_server_is_reaped_and_restarted_from_its_aof(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as server:
        client = redis.Redis.from_url(server.url, socket_timeout=1)
        client.set("acknowledged", "yes")
        first = server.pid
        assert first is not None and int((tmp_path / "redis.pid").read_text()) == first
        os.kill(first, signal.SIGKILL)
        killed = time.monotonic()
        while True:
            try:
                if client.get("acknowledged") == b"yes":
                    break
            except redis.ConnectionError:
                pass
            assert time.monotonic() - killed < 2.0, "not answering again within 2 s of the kill"
            time.sleep(0.02)
        assert server.pid != first and server.restarts == 1
        with pytest.raises(ProcessLookupError):  # a zombie would still take signal 0
            os.kill(first, 0)
    assert server.pid is None  # stop() ended the replacement too, and the supervisor let it be
