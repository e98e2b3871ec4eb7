"""What the ONNX embedder changes against sentence-transformers on PyTorch: vectors, decisions, speed.

    python -m bench.embedder_quality [--limit N]

On the texts of the comqa-dev and qqp-dev streams, for ONNX fp32 and ONNX int8 against the
PyTorch fp32 reference:
- cosine between the reference vector and the runtime's vector of each text;
- the semantic tier's decision: each query's most similar earlier query, served at threshold t
  or not; a flip is a query whose decision at t differs from the reference's (or that is served
  with a different neighbour), at t = 0.90 .. 0.98;
- one-text latency, the three runtimes interleaved so they share the machine's load.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from bench import output
from bench.heldout import read_jsonl
from bench.paths import add_workloads
from bench.paths import workload as workload_folder
from catcache.index.embedder import Embedder, model_path

THRESHOLDS = (0.90, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 0.995)
MODEL = "all-MiniLM-L6-v2"


class TorchReference:
    """sentence-transformers on PyTorch fp32: the vectors thresholds were calibrated on so far."""

    def __init__(self) -> None:
        from sentence_transformers import SentenceTransformer

        self._model = SentenceTransformer(str(model_path(MODEL)), device="cpu")

    def encode(self, texts: list[str]) -> np.ndarray:
        return self._model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                                  show_progress_bar=False).astype(np.float32)


def nearest_earlier(vectors: np.ndarray, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """For each row, the index and similarity of its most similar earlier row (-1 and -inf for the first)."""
    best, where = np.full(len(vectors), -np.inf, dtype=np.float32), np.full(len(vectors), -1)
    for start in range(0, len(vectors), block):
        rows = vectors[start:start + block]
        sims = rows @ vectors[: start + len(rows)].T
        for offset in range(len(rows)):
            sims[offset, start + offset:] = -np.inf  # only earlier queries
        if start == 0:
            sims[0, :] = -np.inf
        where[start:start + len(rows)] = sims.argmax(1)
        best[start:start + len(rows)] = sims.max(1)
    where[best == -np.inf] = -1
    return where, best


def flips(reference: tuple[np.ndarray, np.ndarray], other: tuple[np.ndarray, np.ndarray]) -> dict[str, int]:
    """Per threshold, queries whose serve/refuse decision (or served neighbour) differs from the reference."""
    (ref_at, ref_sim), (at, sim) = reference, other
    out = {}
    for t in THRESHOLDS:
        ref_serve, serve = ref_sim >= t, sim >= t
        out[str(t)] = int(((ref_serve != serve) | (ref_serve & serve & (ref_at != at))).sum())
    out["served_by_reference_at_0.90"] = int((ref_sim >= 0.90).sum())
    return out


def latency(encoders: dict[str, object], texts: list[str]) -> dict[str, dict]:
    times: dict[str, list[float]] = {name: [] for name in encoders}
    for text in texts:
        for name, encoder in encoders.items():
            started = time.perf_counter()
            encoder.encode([text])
            times[name].append((time.perf_counter() - started) * 1000)
    return {name: output.percentiles(values[10:], (50, 99)) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, help="only the first N texts of each stream")
    parser.add_argument("--latency-texts", type=int, default=300)
    parser.add_argument("--out", type=Path, help="the results file (default: bench/results/embedder_quality.json)")
    add_workloads(parser)
    args = parser.parse_args()
    encoders = {"torch fp32": TorchReference(), "onnx fp32": Embedder(MODEL), "onnx int8": Embedder(MODEL + ":int8")}
    result: dict[str, dict] = {}
    for workload in ("comqa-dev", "qqp-dev"):
        texts = [q["text"] for q in read_jsonl(workload_folder(args.workloads, workload) / "stream.jsonl")][: args.limit]
        vectors = {name: encoder.encode(texts) for name, encoder in encoders.items()}
        neighbours = {name: nearest_earlier(v) for name, v in vectors.items()}
        reference = vectors["torch fp32"]
        result[workload] = {"texts": len(texts), **{
            name: {"cosine_to_torch": output.percentiles((v * reference).sum(1), (0, 1, 50)),
                   "flips": flips(neighbours["torch fp32"], neighbours[name])}
            for name, v in vectors.items() if name != "torch fp32"}}
    comqa = [q["text"] for q in read_jsonl(workload_folder(args.workloads, "comqa-dev") / "stream.jsonl")]
    result["latency_ms_one_text"] = latency(encoders, comqa[: args.latency_texts])
    for workload in ("comqa-dev", "qqp-dev"):
        runs = {k: v for k, v in result[workload].items() if k != "texts"}
        output.show(f"{workload}: {result[workload]['texts']} texts against torch fp32",
                    ["runtime", "cosine min", "cosine p1", "cosine p50", *(f"@{t}" for t in THRESHOLDS)],
                    [[name, r["cosine_to_torch"]["p0"], r["cosine_to_torch"]["p1"], r["cosine_to_torch"]["p50"],
                      *(r["flips"][str(t)] for t in THRESHOLDS)] for name, r in runs.items()])
    output.show("one text (ms)", ["runtime", "p50", "p99"],
                [[name, p["p50"], p["p99"]] for name, p in result["latency_ms_one_text"].items()])
    output.save("embedder_quality", result, args.out)


if __name__ == "__main__":
    main()
