"""The embedder: the real model, offline, batching concurrent requests into one model call."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from catcache.index.embedder import Embedder


@pytest.fixture(scope="module")
def embedder():
    model = Embedder()
    yield model
    model.close()


def test_vectors_are_unit_length_and_paraphrases_are_close(embedder):
    a, b, c = embedder.encode(["How do I reverse a list in Python?", "How can I reverse a list in Python?",
                               "What is the capital of Australia?"])
    assert np.allclose([np.linalg.norm(a), np.linalg.norm(b)], 1.0, atol=1e-5)
    assert a @ b > 0.9 > a @ c


def test_concurrent_requests_share_model_calls(embedder, monkeypatch):
    texts = [f"Question number {i}: what is {i} squared?" for i in range(24)]
    batches: list[int] = []
    encode = embedder.encode

    def counting(batch: list[str], **kwargs) -> np.ndarray:
        batches.append(len(batch))
        return encode(batch, **kwargs)

    monkeypatch.setattr(embedder, "encode", counting)

    async def all_at_once() -> list[np.ndarray]:
        return await asyncio.gather(*(embedder.embed(t) for t in texts))

    vectors = asyncio.run(all_at_once())
    assert sum(batches) == len(texts) and len(batches) < len(texts) / 2, batches
    assert np.allclose(np.stack(vectors), encode(texts), atol=1e-5), "each request gets its own vector"
