"""The system under test: the test backend as its own process and `catcache serve` in front of it.

The backend runs in a separate process (not a thread of the benchmark) so its event loop does not
compete with the client's for one interpreter lock; on 2 cores that would distort every latency.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from catcache.process import die_with_parent
from catcache.testing.proxy import DEFAULT_POLICIES, ProxyProcess, free_port, wait_http

SERVERS = {"uvicorn": "catcache.testing.backend", "plain": "catcache.testing.plain_backend"}


@contextmanager
def backend(think_ms: float, tokens_per_s: float, server: str = "uvicorn") -> Iterator[str]:
    """`python -m catcache.testing.backend` (or `.plain_backend`) on a free port; yields its base URL (ending in /v1).
    The plain server has no token rate: it answers whole after `think_ms`."""
    rate = ["--tokens-per-s", str(tokens_per_s)] if server == "uvicorn" else []
    with test_server(SERVERS[server], "--think-ms", str(think_ms), *rate) as url:
        yield url


@contextmanager
def test_server(module: str, *args: str) -> Iterator[str]:
    """`python -m MODULE --port PORT ARGS...` in its own process until /v1/models answers; yields its base URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", module, "--port", str(port), *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, preexec_fn=die_with_parent(),
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", process=process)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def proxy(backend_url: str, policies: Path = DEFAULT_POLICIES, source: Path | None = None) -> Iterator[ProxyProcess]:
    """A fresh catcache (empty cache, its own embedded Redis) in front of `backend_url`; from the
    source folder `source` (imported as `catcache`) instead of the installed one when given.

    Every backend of the policy (the small IC one too) is pointed at the test backend, so an IC
    answer costs a backend call here as it would in production instead of failing.
    """
    policy = yaml.safe_load(Path(policies).read_text())
    for settings in (policy.get("backends") or {}).values():
        settings["url"] = backend_url
    with served(policy, source, backend_url) as running:
        yield running


@contextmanager
def served(policy: dict, source: Path | None = None, backend_url: str | None = None) -> Iterator[ProxyProcess]:
    """A fresh catcache (empty cache, its own embedded Redis) running `policy`, its large backend
    overridden by `backend_url` (`--backend`) when given."""
    with tempfile.TemporaryDirectory(prefix="catcache-bench-") as tmp:
        written = Path(tmp) / "policies.yaml"
        written.write_text(yaml.safe_dump(policy))
        env = None
        if source is not None:
            (Path(tmp) / "path").mkdir()
            (Path(tmp) / "path" / "catcache").symlink_to(Path(source).resolve())
            env = {"PYTHONPATH": str(Path(tmp) / "path")}
        process = ProxyProcess(backend_url, written, Path(tmp) / "data", env=env).start(timeout=180)
        try:
            yield process
        finally:
            process.stop()


@contextmanager
def catcache(think_ms: float, tokens_per_s: float, policies: Path = DEFAULT_POLICIES,
             url: str | None = None) -> Iterator[str]:
    """The proxy's base URL: `url` if given (an already running catcache), else a fresh stack."""
    if url:
        yield url.rstrip("/")
        return
    with backend(think_ms, tokens_per_s) as backend_url, proxy(backend_url, policies) as running:
        yield running.base_url


@contextmanager
def uniform_policies(source: Path, threshold: float) -> Iterator[Path]:
    """A copy of `source` with every category's threshold set to `threshold`, the verifier off and
    no IC band: the one-threshold semantic cache that the category-aware one is measured against."""
    policy = yaml.safe_load(source.read_text())
    for category in policy["categories"].values():
        category["threshold"] = threshold
        category["verify"] = {"enabled": False}
        category.pop("ic", None)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="uniform-", delete=False) as out:
        yaml.safe_dump(policy, out)
    try:
        yield Path(out.name)
    finally:
        Path(out.name).unlink(missing_ok=True)
