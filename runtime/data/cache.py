"""On-disk embedding cache: backbone outputs per sample, keyed by sample content hash + backbone hash.

One SQLite file (WAL) per cache directory; a row holds one sample's head inputs as raw bytes in the
order and shapes the bundle's ``head_inputs`` give. Re-runs, more epochs and new samples only pay the
backbone for samples not seen before with this exact backbone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ftedge import sqlite_db
from ftedge.errors import CacheError, FtedgeError, StopRequested
from ftedge.bundle.manifest import TensorSpec


# Migration i brings the cache file from schema i to i + 1 (PRAGMA user_version). Files written before the
# cache had a version are schema 0 with the table already there: step 0 keeps it (IF NOT EXISTS).
_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS emb (backbone TEXT, sample TEXT, data BLOB, PRIMARY KEY (backbone, sample));",
]
SCHEMA_VERSION = len(_SCHEMA)


class EmbeddingCache:
    """Backbone outputs per (backbone hash, sample hash), so a re-run or a resumed run skips the backbone."""

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / "embeddings.sqlite"
        self.db = sqlite_db.connect(self.path, error=CacheError, what="the embedding cache", autocommit=False)
        try:
            sqlite_db.migrate(self.db, _SCHEMA, error=CacheError, what=f"the embedding cache {self.path}",
                              newer_hint="upgrade ftedge, or delete the file (it is only a cache)")
        except BaseException:
            self.db.close()
            raise

    def close(self) -> None:
        self.db.close()

    def lookup(self, backbone: str, samples: list[str]) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        for i in range(0, len(samples), 500):
            chunk = samples[i:i + 500]
            q = f"SELECT sample, data FROM emb WHERE backbone=? AND sample IN ({','.join('?' * len(chunk))})"
            found.update(self.db.execute(q, [backbone, *chunk]).fetchall())
        return found

    def store(self, backbone: str, rows: list[tuple[str, bytes]]) -> None:
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO emb VALUES (?, ?, ?)", [(backbone, s, d) for s, d in rows])

    def size_bytes(self) -> int:
        return int(self.db.execute("SELECT COALESCE(SUM(LENGTH(data)), 0) FROM emb").fetchone()[0])

    def trim(self, max_bytes: int) -> int:
        """Delete the oldest rows (insertion order) until the stored embeddings fit ``max_bytes``; returns
        the number deleted. The file is compacted (VACUUM) when anything went; a full disk skips that."""

        total, deleted = self.size_bytes(), 0
        if total <= max_bytes:
            return 0
        with self.db:
            rows = self.db.execute("SELECT rowid, LENGTH(data) FROM emb ORDER BY rowid").fetchall()
            victims = []
            for rowid, n in rows:
                if total <= max_bytes:
                    break
                victims.append((rowid,))
                total -= n or 0
            self.db.executemany("DELETE FROM emb WHERE rowid = ?", victims)
            deleted = len(victims)
        try:
            self.db.execute("VACUUM")
        except sqlite_db.Error:
            pass
        return deleted


def _per_sample(spec: TensorSpec) -> tuple[list[int], int]:
    shape = spec.sample_shape
    return shape, int(np.prod(shape, dtype=np.int64)) * np.dtype(spec.dtype).itemsize


def pack(specs: list[TensorSpec], values: dict[str, np.ndarray], i: int) -> bytes:
    """Sample ``i`` of a batch of head inputs as one bytes blob."""
    parts = []
    for s in specs:
        arr = np.take(values[s.name], i, axis=s.batch_axis or 0)
        parts.append(np.ascontiguousarray(arr, dtype=s.dtype).tobytes())
    return b"".join(parts)


def unpack(specs: list[TensorSpec], blobs: list[bytes]) -> dict[str, np.ndarray]:
    """Blobs of N samples → head inputs with the batch on each tensor's own batch axis."""
    out: dict[str, np.ndarray] = {}
    offset = 0
    raw = np.frombuffer(b"".join(blobs), dtype=np.uint8).reshape(len(blobs), -1)
    for s in specs:
        shape, nbytes = _per_sample(s)
        arr = np.ascontiguousarray(raw[:, offset:offset + nbytes]).view(s.dtype).reshape(len(blobs), *shape)
        out[s.name] = np.moveaxis(arr, 0, s.batch_axis or 0) if (s.batch_axis or 0) != 0 else arr
        offset += nbytes
    return out


def embed_with_cache(
    cache: EmbeddingCache | None,
    backbone_key: str,
    specs: list[TensorSpec],
    hashes: list[str],
    inputs: dict[str, np.ndarray],
    embed: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    batch_size: int,
    progress: Callable[[int], None] = lambda _n: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> tuple[dict[str, np.ndarray], int]:
    """Head inputs for every sample; runs ``embed`` only on samples missing from the cache.

    Returns (head inputs stacked on their batch axes, number of samples computed now). ``should_stop`` is
    asked before every batch; when it says yes, :class:`StopRequested` is raised (what was embedded so
    far stays cached).
    """
    def check() -> None:
        if should_stop():
            raise StopRequested("embedding stopped on request (cancel or shutdown)")

    if cache is None:  # nothing to persist: embed in batches, no per-sample packing
        parts: list[dict[str, np.ndarray]] = []
        for start in range(0, len(hashes), batch_size):
            check()
            parts.append(embed({k: v[start:start + batch_size] for k, v in inputs.items()}))
            progress(len(parts[-1][specs[0].name]) if specs else 0)
        joined = {s.name: np.concatenate([p[s.name] for p in parts], axis=s.batch_axis or 0) for s in specs}
        return joined, len(hashes)
    found = cache.lookup(backbone_key, hashes)
    missing = [i for i, h in enumerate(hashes) if h not in found]
    blobs: dict[str, bytes] = dict(found)
    for start in range(0, len(missing), batch_size):
        check()
        idx = np.asarray(missing[start:start + batch_size])
        values = embed({k: v[idx] for k, v in inputs.items()})
        rows = [(hashes[j], pack(specs, values, k)) for k, j in enumerate(idx)]
        cache.store(backbone_key, rows)
        blobs.update(rows)
        progress(len(idx))
    return unpack(specs, [blobs[h] for h in hashes]), len(missing)
