"""Snapshots of the semantic indexes on disk, so a restart loads them instead of rebuilding.

A snapshot is one file pair per category (the hnswlib graph and its label -> entry map) and a
manifest, written last, that names them with the Redis event-stream position they cover, the
vector dimension and the embedding model. Files of a new snapshot get a new generation number,
and the manifest is replaced atomically, so a crash mid-save leaves the previous snapshot whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from catcache.index.hnsw import CategoryIndex

MANIFEST = "manifest.json"
FORMAT = 1


def directory(data_dir: Path, external_redis: str | None) -> Path:
    """Where the snapshots of a proxy's indexes go: one folder per Redis they were built from."""
    if external_redis is None:
        return data_dir / "index"
    return data_dir / f"index-{hashlib.sha256(external_redis.encode()).hexdigest()[:12]}"


@dataclass(frozen=True)
class Snapshot:
    indexes: dict[str, CategoryIndex]
    position: str  # the last event of the Redis stream these indexes reflect
    stream_first: str  # the oldest event the stream held when it was saved
    created: float


def save(directory: Path, indexes: dict[str, CategoryIndex], position: str, stream_first: str, model: str,
         dim: int) -> None:
    """Write every category's index, then the manifest; remove the previous generation's files."""
    directory.mkdir(parents=True, exist_ok=True)
    generation = time.time_ns()
    files = {}
    for number, (category, index) in enumerate(sorted(indexes.items())):
        graph, entries = f"{generation}-{number}.hnsw", f"{generation}-{number}.entries"
        index.save(directory / graph, directory / entries)
        files[category] = {"graph": graph, "entries": entries}
    manifest = {"format": FORMAT, "position": position, "stream_first": stream_first, "model": model, "dim": dim, "created": time.time(),
                "categories": files}
    temporary = directory / f"{MANIFEST}.{generation}.tmp"
    temporary.write_text(json.dumps(manifest, indent=1))
    os.replace(temporary, directory / MANIFEST)
    keep = {MANIFEST, *(name for pair in files.values() for name in pair.values())}
    for path in directory.iterdir():
        if path.name not in keep:
            path.unlink(missing_ok=True)


def load(directory: Path, model: str, dim: int) -> Snapshot | None:
    """The snapshot in `directory`, or None when there is none or it was made for another model or
    dimension. A damaged file raises (hnswlib, pickle or json errors): the caller rebuilds."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except FileNotFoundError:
        return None
    if manifest.get("format") != FORMAT or manifest.get("model") != model or manifest.get("dim") != dim:
        return None
    indexes = {category: CategoryIndex.load(dim, directory / files["graph"], directory / files["entries"])
               for category, files in manifest["categories"].items()}
    return Snapshot(indexes, manifest["position"], manifest["stream_first"], manifest["created"])
