"""The embedder: the real model, offline, batching concurrent requests into one model call."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from catcache.index.embedder import Embedder, model_path


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


def test_a_failed_model_call_reaches_every_waiter_and_the_worker_goes_on(embedder, monkeypatch):
    encode = embedder.encode
    monkeypatch.setattr(embedder, "encode", lambda batch, **kwargs: 1 / 0)

    async def failing() -> list:
        return await asyncio.gather(*(embedder.embed(f"q {i}") for i in range(5)), return_exceptions=True)

    assert all(isinstance(r, ZeroDivisionError) for r in asyncio.run(failing()))
    monkeypatch.setattr(embedder, "encode", encode)
    assert asyncio.run(embedder.embed("still answering")).shape == (embedder.dim,)


def reference_texts() -> list[str]:
    """A few hundred texts of every length up to past the window: short, long, punctuation, numbers, casing."""
    subjects = ["a list in Python", "the capital of Australia", "my JavaScript promise", "a Redis cluster",
                "the boiling point of water", "Shakespeare's Hamlet", "a sourdough starter", "the French Revolution",
                "UTF-8 décodage", "3.14 * 42 - 7", "the GDP of Japan in 2020", "OK", "a SQL LEFT JOIN",
                "photosynthesis", "the Treaty of Westphalia", "my cat's sneezing", "kubectl rollout undo",
                "a haiku about autumn", "the speed of light in km/s", "Müller's ratchet", "tax on 1,234.56 EUR",
                "the offside rule", "email: bob@example.com", "the derivative of x^2 + 3x"]
    shapes = ["{s}", "How do I fix {s}?", "what is {s}", "Explain {s} to a five-year-old, in detail, please!",
              "Compare {s} with {s} and with {s}.", "WHY IS {s} SO HARD??", "{s} " * 40, "Tell me about {s}; then stop."]
    texts = [shape.format(s=subject) for shape in shapes for subject in subjects]
    pairs = [json.loads(line) for line in (Path(__file__).parents[1] / "data" / "verify_pairs.jsonl").read_text().splitlines()]
    texts += [pair[side] for pair in pairs for side in ("a", "b")]
    return texts + ["antidisestablishmentarianism " * 300, "ok", "x"]


def test_onnx_vectors_match_sentence_transformers_on_torch(embedder):
    """The graph built without torch (index/onnx_export.py) computes what sentence-transformers does."""
    from sentence_transformers import SentenceTransformer

    texts = reference_texts()
    assert len(texts) > 250
    reference = SentenceTransformer(str(model_path("all-MiniLM-L6-v2")), device="cpu").encode(
        texts, normalize_embeddings=True, batch_size=32)
    cosines = (embedder.encode(texts, batch_size=32) * reference).sum(1)
    assert cosines.min() >= 0.9999, [(texts[i][:60], float(cosines[i])) for i in np.argsort(cosines)[:3]]


def test_a_huge_prompt_is_cut_to_the_model_window_without_losing_a_token(embedder):
    """256 tokens are all the model reads: [CLS], 254 words, [SEP]; the other 4 million never get tokenized."""
    huge, window = embedder.encode(["word " * 4_000_000, "word " * 254])
    assert huge @ window > 0.99999


def test_the_int8_model_stays_close_to_fp32(embedder):
    quantised = Embedder("all-MiniLM-L6-v2:int8")
    texts = ["How do I reverse a list in Python?", "What is the capital of Australia?"]
    try:
        assert quantised.dim == embedder.dim
        assert ((quantised.encode(texts) * embedder.encode(texts)).sum(1) > 0.97).all()
    finally:
        quantised.close()
