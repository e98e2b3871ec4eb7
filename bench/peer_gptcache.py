"""GPTCache 0.1.44 as a library peer: its `get`/`put` API, SQLite for the answers, hnswlib for the vectors.

hnswlib is the library catcache uses, so the comparison is of the caching policy, not of the ANN
library. Its similarity threshold t is on its own 0..1 scale over hnswlib's squared L2 distance
(0..4 for unit vectors) with the default SearchDistanceEvaluation: t keeps a neighbour with
cosine >= 2t - 1, so the sweep is given in cosine. Its documented default is t = 0.8 (cosine 0.6).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

DEFAULT_COSINE = 2 * 0.8 - 1  # Config(similarity_threshold=0.8), GPTCache's default


class GPTCachePeer:
    """A fresh GPTCache in a temporary folder, keeping neighbours at `cosine` or above.

    `embed` is the embedding function GPTCache calls on every get and put (its own path); the
    sweep passes a look-up of vectors embedded once, the latency runs MiniLM itself.
    """

    name = "GPTCache"

    def __init__(self, cosine: float, embed: Callable[[str], np.ndarray], capacity: int, folder: Path | None = None):
        from gptcache import Cache, Config
        from gptcache.manager import CacheBase, VectorBase, get_data_manager
        from gptcache.processor.pre import get_prompt
        from gptcache.similarity_evaluation.distance import SearchDistanceEvaluation

        self._tmp = None if folder else tempfile.TemporaryDirectory(prefix="gptcache-")
        self.folder = Path(folder or self._tmp.name)
        self.folder.mkdir(parents=True, exist_ok=True)
        dimension = len(embed("dimension probe"))
        self.cache = Cache()
        self.cache.init(
            pre_embedding_func=get_prompt,
            embedding_func=lambda text, **_: embed(text),
            data_manager=get_data_manager(
                CacheBase("sqlite", sql_url=f"sqlite:///{self.folder}/cache.db"),
                VectorBase("hnswlib", dimension=dimension, index_path=f"{self.folder}/hnsw.bin", top_k=1,
                           max_elements=capacity + 1),
                # GPTCache keeps 1,000 entries by default and evicts the rest; catcache's quota never
                # binds on these workloads, so neither may GPTCache's.
                max_size=capacity + 1),
            similarity_evaluation=SearchDistanceEvaluation(),
            config=Config(similarity_threshold=(cosine + 1) / 2),
        )
        store = self.cache.data_manager.v
        store._index.set_ef(64)  # GPTCache sets ef = 2 * top_k; catcache searches at 64
        search = store.search
        # GPTCache's hnswlib store returns numpy.uint64 ids, which match no row in its SQLite store
        # (every lookup misses); plain ints are what the store expects.
        store.search = lambda data, top_k=-1: [(float(d), int(i)) for d, i in search(data, top_k)]
        self.empty = True

    def lookup(self, text: str) -> str | None:
        from gptcache.adapter.api import get

        if self.empty:  # hnswlib refuses to search an empty index
            return None
        return get(text, cache_obj=self.cache)

    def store(self, text: str, answer: str) -> None:
        from gptcache.adapter.api import put

        put(text, answer, cache_obj=self.cache)
        self.empty = False

    def close(self) -> None:
        self.cache.data_manager.close()
        if self._tmp is not None:
            self._tmp.cleanup()
