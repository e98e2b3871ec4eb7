"""catcache's test harness, public so that you can test your own app against catcache the way
catcache tests itself (as Starlette ships `starlette.testclient`).

- `TestBackend`: an OpenAI-compatible fake of vLLM in a background thread (`catcache.testing.backend`;
  `python -m catcache.testing.backend` runs it as a process of its own). It numbers its answers, so
  a cached answer is told from a new one, and fails on request headers.
- `PlainBackend`: the same answers from Python's http.server, a server without uvicorn's niceties.
- `ProxyProcess`: `catcache serve` as a child process on a free port.
- `in_process`: catcache's ASGI app in this process, with the official openai SDK as its client.
- `catcache.testing.redis`, `.faults`, `.traffic`: a Redis Cluster, killable servers, and load.
"""

from .backend import TestBackend, group_replies
from .inprocess import InProcess, in_process
from .plain_backend import PlainBackend
from .proxy import ProxyProcess, free_port, wait_http

__all__ = ["InProcess", "PlainBackend", "ProxyProcess", "TestBackend", "free_port", "group_replies",
           "in_process", "wait_http"]
