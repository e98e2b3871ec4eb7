"""An OpenAI-compatible stand-in for vLLM that tests and benchmarks put behind catcache.

Every generation answers "Answer #<n> to: <question>", where n counts generations across the
server's life: an answer whose n was already seen came from a cache, a new n means the backend was
called. Think time and a token rate make latency realistic, and request headers trigger the
failures a proxy must survive:

- `x-test-status: 503` answers that status with an OpenAI error body (any path but /stats);
- `x-test-truncate: 1` cuts a stream halfway, with neither finish_reason nor [DONE];
- `x-test-hang: 1` never answers (it holds the connection until the client gives up).

With `prefix_slots` it models vLLM's prefix cache for the routing bench: a chat request whose
system prompt is not among the last `prefix_slots` this server saw first waits `prefix_ms` more
(its prefill); GET /stats/prefix-cache counts hits and misses.

It can also stand in for a model that knows the answers: `replies` maps a question (the last user
message, or the prompt) to the answer it gets instead of "Answer #n to: ...", and `groups` maps
each question to a group whose questions all get one answer. With `slots` only that many
generations run at once and the rest wait their turn (a GPU's batch is finite, so a queue forms
under load).

Run it alone with `python -m catcache.testing.backend --port 8000 --think-ms 400 --tokens-per-s 50`.
"""

from .answers import EMBEDDING_DIM
from .app import create_app
from .server import TestBackend
from .state import DEFAULT_MODELS, BackendState, group_replies

__all__ = ["DEFAULT_MODELS", "EMBEDDING_DIM", "BackendState", "TestBackend", "create_app", "group_replies"]
