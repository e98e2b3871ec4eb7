"""An OpenAI-compatible `/v1/embeddings` endpoint serving catcache's MiniLM embedder.

LiteLLM's `redis-semantic` cache embeds every prompt by calling an embedding model through
LiteLLM itself; pointing it here gives it the same all-MiniLM-L6-v2 vectors (the packaged
weights, on ONNX Runtime) that catcache, RedisVL and GPTCache use in the side by side.

    python -m bench.embedding_server --port 8001
"""

from __future__ import annotations

import argparse
import asyncio

import uvicorn
from fastapi import FastAPI, Request

from catcache.index.embedder import Embedder


def create_app(embedder: Embedder) -> FastAPI:
    app = FastAPI(title="MiniLM embeddings", openapi_url=None)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> dict:
        body = await request.json()
        raw = body.get("input", "")
        texts = [raw] if isinstance(raw, str) else [str(t) for t in raw]
        vectors = await asyncio.to_thread(embedder.encode, texts)
        data = [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)]
        tokens = sum(len(t.split()) for t in texts)
        return {"object": "list", "data": data, "model": body.get("model", ""),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": "all-MiniLM-L6-v2", "object": "model", "owned_by": "catcache"}]}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(create_app(Embedder()), host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
