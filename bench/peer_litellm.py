"""The LiteLLM proxy as a peer: `litellm --config` in front of the same test backend.

LiteLLM pins openai, pydantic and others differently from catcache, so it runs from its own
virtual environment (`--litellm PATH/bin/litellm`) and is reached over HTTP only. Its
`redis-semantic` cache is RedisVL's SemanticCache on the bench's Redis 8 with RediSearch; it embeds
each prompt through a model of its own config, here `bench.embedding_server` (MiniLM), so the
vectors are the ones every other system gets. It embeds the text of *all* messages joined, and
keeps the entries of each API key (when the proxy authenticates keys) apart. Its similarity
threshold has no default (`similarity_threshold` is required); its docs' example sets 0.8.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import yaml

from catcache.process import die_with_parent, free_port, stop_process
from catcache.testing.proxy import wait_http

DOCS_EXAMPLE_SIMILARITY = 0.8
MODEL = "test-model"
EMBEDDING_MODEL = "minilm"
CUSTOM_AUTH = """
from fastapi import HTTPException, Request
from litellm.proxy._types import LitellmUserRoles, UserAPIKeyAuth


async def user_api_key_auth(request: Request, api_key: str) -> UserAPIKeyAuth:
    if api_key == {master!r}:
        return UserAPIKeyAuth(api_key=api_key, user_role=LitellmUserRoles.PROXY_ADMIN)
    if api_key not in {keys!r}:
        raise HTTPException(status_code=401, detail="unknown key")
    return UserAPIKeyAuth(api_key=api_key)
"""


def config(backend_url: str, embed_url: str, redis_url: str | None, similarity: float | None,
           master_key: str, models: Sequence[str]) -> dict:
    """A proxy config: each of `models` on the test backend; with `similarity`, the redis-semantic cache."""
    served = [{"model_name": name, "litellm_params": {"model": f"openai/{name}", "api_base": backend_url,
                                                       "api_key": "bench"}} for name in models]
    embedding = [{"model_name": EMBEDDING_MODEL, "litellm_params": {"model": "openai/all-MiniLM-L6-v2",
                                                                  "api_base": embed_url, "api_key": "bench"}}]
    # It refuses to start without a master key; with no database it is the only key it accepts.
    document: dict = {"model_list": [*served, *embedding], "litellm_settings": {"telemetry": False},
                      "general_settings": {"master_key": master_key}}
    if similarity is not None:
        document["litellm_settings"].update(cache=True, cache_params={
            "type": "redis-semantic", "redis_url": redis_url, "similarity_threshold": similarity,
            "redis_semantic_cache_embedding_model": EMBEDDING_MODEL,
            "redis_semantic_cache_index_name": f"litellm-{secrets.token_hex(4)}"})
    return document


@contextmanager
def proxy(executable: Path, backend_url: str, embed_url: str, redis_url: str | None = None,
          similarity: float | None = None, models: Sequence[str] = (MODEL,),
          tenant_keys: Sequence[str] = ()) -> Iterator[tuple[str, str]]:
    """A LiteLLM proxy with `config(...)` on a free port, one worker; yields (base URL …/v1, master key).

    With `tenant_keys`, a `custom_auth` hook accepts each of them as its own key: LiteLLM's own
    virtual keys need a Postgres database, which the bench does not run."""
    port = free_port()
    master_key = f"sk-{secrets.token_hex(32)}"
    with tempfile.TemporaryDirectory(prefix="litellm-") as tmp:
        path = Path(tmp) / "config.yaml"
        document = config(backend_url, embed_url, redis_url, similarity, master_key, models)
        if tenant_keys:
            (Path(tmp) / "tenant_auth.py").write_text(CUSTOM_AUTH.format(keys=sorted(tenant_keys), master=master_key))
            document["general_settings"]["custom_auth"] = "tenant_auth.user_api_key_auth"
        path.write_text(yaml.safe_dump(document))
        env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
               "PYTHONPATH": "", "NO_DOCS": "True"}
        with open(Path(tmp) / "litellm.log", "wb") as log:
            process = subprocess.Popen([str(executable), "--config", str(path), "--host", "127.0.0.1",
                                        "--port", str(port), "--num_workers", "1"],
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                       cwd=tmp, preexec_fn=die_with_parent())
        try:
            try:
                wait_http(f"http://127.0.0.1:{port}/health/liveliness", timeout=240, process=process)
            except (RuntimeError, TimeoutError) as exc:
                tail = (Path(tmp) / "litellm.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"LiteLLM proxy did not start: {exc}\n{tail}") from None
            yield f"http://127.0.0.1:{port}/v1", master_key
        finally:
            stop_process(process)
