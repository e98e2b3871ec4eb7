"""catcache's test harness, public so that you can test your own app against catcache the way
catcache tests itself (as Starlette ships `starlette.testclient`).

- `TestBackend`: an OpenAI-compatible fake of vLLM in a background thread (`catcache.testing.backend`;
  `python -m catcache.testing.backend` runs it as a process of its own). It numbers its answers, so
  a cached answer is told from a new one, and fails on request headers.
- `catcache.testing.plain_backend.PlainBackend`: the same answers from Python's http.server, a server
  without uvicorn's niceties (imported on its own: `python -m` runs it as a script).
- `ProxyProcess`: `catcache serve` as a child process on a free port.
- `catcache.testing.inprocess.in_process`: catcache's ASGI app in this process, with the official openai
  SDK as its client (imported on its own: it loads the whole proxy).
- `catcache.testing.redis`, `.faults`, `.traffic`: a Redis Cluster, killable servers, and load.
"""

from .backend import TestBackend, group_replies
from .proxy import ProxyProcess, free_port, wait_http

__all__ = ["ProxyProcess", "TestBackend", "free_port", "group_replies", "wait_http"]
