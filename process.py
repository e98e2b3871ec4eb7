"""Child servers of the proxy (the embedded Redis, the bundled model): how they are started, waited
for, and stopped, once for both.

A child writes its output to a log file, runs in a session of its own (Ctrl-C reaches the proxy,
which then stops its children in order) and dies with the proxy even when the proxy is SIGKILLed.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

STOP_TIMEOUT = 10.0
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A loopback port nobody listens on right now (another process could still take it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that has Linux send the child SIGTERM when its parent dies (None elsewhere).

    The signal follows the *thread* that forked, so start children from a long-lived thread.
    """
    if sys.platform != "linux":
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before fork: the child may only call into it
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def spawn(args: Sequence[str], log_path: Path, pass_fds: Sequence[int] = ()) -> subprocess.Popen[bytes]:
    """Start a child server with its stdout and stderr appended to `log_path`."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(list(args), stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=tuple(pass_fds),
                                preexec_fn=die_with_parent(), start_new_session=True)


def wait_ready(process: subprocess.Popen[bytes], ready: Callable[[], bool | None], timeout: float,
               interval: float = 0.02) -> bool:
    """Poll `ready()` until it says True; False if the process exits or `timeout` passes first.

    `ready()` returning None means "not yet, but progressing" (Redis replaying its append-only
    file), which starts the timeout again.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        answer = ready()
        if answer:
            return True
        if answer is None:
            deadline = time.monotonic() + timeout
        time.sleep(interval)
    return False


def stop_process(process: subprocess.Popen | None, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM a child server, SIGKILL it if it has not exited within `timeout`; idempotent."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
