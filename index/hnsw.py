"""One in-memory HNSW graph per category, mapping integer labels to Redis document ids.

The graph answers "which cached queries are nearest" in well under a millisecond; everything a
hit needs beyond that (the response, whether it is still alive) is one read from Redis.
"""

from __future__ import annotations

import pickle
import sys
from dataclasses import dataclass
from pathlib import Path

import hnswlib
import numpy as np

INITIAL_CAPACITY = 1024


@dataclass(frozen=True, slots=True)  # slots: ~100 bytes less per cached entry
class Entry:
    doc_id: str
    scope_key: str

    @classmethod
    def of(cls, doc_id: str, scope_key: str) -> Entry:
        """An entry whose scope string is shared with every other entry of that scope (one tenant's
        or conversation's entries repeat it), not one copy each: ~110 bytes less an entry."""
        return cls(doc_id, sys.intern(scope_key))


@dataclass(frozen=True)
class Neighbour:
    entry: Entry
    similarity: float


class CategoryIndex:
    """Cosine HNSW over unit vectors; grows by doubling, deletes with mark_deleted."""

    def __init__(self, dim: int, capacity: int = INITIAL_CAPACITY, ef: int = 64, m: int = 16):
        self.dim = dim
        self._graph = hnswlib.Index(space="ip", dim=dim)
        if capacity:
            self._graph.init_index(max_elements=capacity, ef_construction=200, M=m, allow_replace_deleted=True)
            self._graph.set_ef(ef)
        self._entries: dict[int, Entry] = {}
        self._labels: dict[str, int] = {}
        self._next_label = 0
        self._deleted = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, doc_id: str) -> bool:
        return doc_id in self._labels

    def doc_ids(self) -> list[str]:
        return list(self._labels)

    def add(self, entry: Entry, vector: np.ndarray) -> None:
        self.add_many([entry], vector.reshape(1, -1))

    def add_many(self, entries: list[Entry], vectors: np.ndarray) -> None:
        """Insert a batch in one hnswlib call, which spreads it over all cores (a rebuild's path).
        An id already present, or repeated in the batch, keeps its last vector."""
        last = {entry.doc_id: i for i, entry in enumerate(entries)}
        if len(last) < len(entries):
            keep = sorted(last.values())
            entries, vectors = [entries[i] for i in keep], vectors[keep]
        for entry in entries:
            self.remove(entry.doc_id)
        reused = min(self._deleted, len(entries))
        needed = self._graph.get_current_count() + len(entries) - reused
        if needed > self._graph.get_max_elements():
            self._graph.resize_index(max(needed, 2 * self._graph.get_max_elements()))
        labels = np.arange(self._next_label, self._next_label + len(entries))
        self._next_label += len(entries)
        self._graph.add_items(vectors, labels, replace_deleted=reused > 0)
        self._deleted -= reused
        for label, entry in zip(labels.tolist(), entries):
            self._entries[label] = entry
            self._labels[entry.doc_id] = label

    def remove(self, doc_id: str) -> None:
        label = self._labels.pop(doc_id, None)
        if label is None:
            return
        del self._entries[label]
        self._graph.mark_deleted(label)
        self._deleted += 1

    def search(self, vector: np.ndarray, k: int) -> list[Neighbour]:
        k = min(k, len(self._entries))
        while True:
            if k == 0:
                return []
            try:
                labels, distances = self._graph.knn_query(vector.reshape(1, -1), k=k)
                break
            except RuntimeError:
                # hnswlib found fewer than k live neighbours (seen under load with many identical
                # vectors and deletions); ask for fewer rather than lose the semantic tier.
                k //= 2
        return [Neighbour(self._entries[int(label)], 1.0 - float(distance))
                for label, distance in zip(labels[0], distances[0]) if int(label) in self._entries]

    def save(self, graph_path: Path, entries_path: Path) -> None:
        """Write the graph (hnswlib's own format) and the label -> entry map beside it.
        The caller must keep the index unchanged meanwhile (reads are fine)."""
        self._graph.save_index(str(graph_path))
        labels = list(self._entries)
        with open(entries_path, "wb") as out:
            pickle.dump({"next_label": self._next_label, "labels": labels,
                         "doc_ids": [self._entries[label].doc_id for label in labels],
                         "scopes": [self._entries[label].scope_key for label in labels]},
                        out, protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def load(cls, dim: int, graph_path: Path, entries_path: Path, ef: int = 64) -> CategoryIndex:
        """An index as `save` wrote it; raises on a file that is damaged or of another dimension."""
        index = cls(dim, capacity=0)
        index._graph.load_index(str(graph_path), allow_replace_deleted=True)
        index._graph.set_ef(ef)
        with open(entries_path, "rb") as source:
            saved = pickle.load(source)  # our own file, in our own data dir
        index._next_label = saved["next_label"]
        index._entries = {label: Entry.of(doc_id, scope)
                          for label, doc_id, scope in zip(saved["labels"], saved["doc_ids"], saved["scopes"])}
        index._labels = {entry.doc_id: label for label, entry in index._entries.items()}
        index._deleted = index._graph.get_current_count() - len(index._entries)
        return index
