"""The policy's data set on disk: its samples by content hash, what is new since the last run, and its caps.

A sample is a file below the data folder (``DATA/<label>/<file>``: its label is the first folder level), or one
non-empty line of a line-based data file (``.jsonl``, ``.csv``, ``.txt``: Q&A pairs, rows). Any other single file
is one sample. Hidden files and names ending in ``.tmp`` are ignored (a writer's staging files).

Hashing reads every byte of a sample once: the digests are kept in ``STATE/personalize/hashes.json`` keyed by
(path, size, mtime), so a check over an unchanged data set reads no sample again. Which samples the last policy run
trained on is a file of 16-hex-digit digest prefixes (``trained.txt``): 100,000 samples take 1.7 MB.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ftedge.durable import atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)

LINE_FILES = (".jsonl", ".csv", ".txt")
DIGEST_CHARS = 16   # 64 bits of sha256: collisions among a box's samples are negligible
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Sample:
    key: str        # relative path (folder data sets) or "FILE#line"
    digest: str     # sha256 prefix of its content
    size: int
    mtime_ns: int
    label: str      # first folder level ("" for a file data set)


def _hidden(name: str) -> bool:
    return name.startswith(".") or name.endswith(".tmp")


def signature(root: Path) -> tuple:
    """A cheap fingerprint of the data set (mtimes and sizes of its folders, or of the file): it changes when a
    sample is added, removed or renamed, without reading any sample."""
    try:
        st = root.stat()
    except OSError:
        return ()
    if not root.is_dir():
        return (st.st_size, st.st_mtime_ns)
    out = [(".", st.st_mtime_ns)]
    try:
        with os.scandir(root) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False) and not _hidden(e.name):
                    out.append((e.name, e.stat().st_mtime_ns))
    except OSError:
        return ()
    return tuple(sorted(out))


class SampleSet:
    """Samples of one data set, hashed with a persistent cache under ``cache_dir``."""

    def __init__(self, root: Path, cache_dir: Path) -> None:
        self.root = Path(root)
        self.cache_dir = Path(cache_dir)
        self.cache_path = self.cache_dir / "hashes.json"
        self.trained_path = self.cache_dir / "trained.txt"
        self._cache: dict[str, list] | None = None

    # --- scanning ---------------------------------------------------------------------------------------
    def _load_cache(self) -> dict[str, list]:
        if self._cache is None:
            try:
                doc = json.loads(self.cache_path.read_text(encoding="utf-8"))
                self._cache = doc if isinstance(doc, dict) and doc.get("root") == str(self.root) else {}
            except (OSError, ValueError):
                self._cache = {}
            self._cache.pop("root", None)
        return self._cache

    def scan(self) -> list[Sample]:
        """Every sample now, hashed (cached by path, size and mtime). Unreadable files are skipped and logged."""
        cache = self._load_cache()
        seen: dict[str, list] = {}
        samples: list[Sample] = []
        if self.root.is_dir():
            files = self._files()
        elif self.root.is_file():
            files = [(self.root.name, self.root)]
        else:
            files = []
        for rel, path in files:
            try:
                st = path.stat()
            except OSError:
                continue
            hit = cache.get(rel)
            if path.suffix.lower() in LINE_FILES and not self.root.is_dir():
                samples += self._lines(rel, path, st)
                continue
            if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
                digest = hit[2]
            else:
                try:
                    digest = _digest_file(path)
                except OSError as exc:
                    log.warning("policy data: cannot read %s (%s); not counted", path, exc)
                    continue
            seen[rel] = [st.st_size, st.st_mtime_ns, digest]
            label = rel.split("/", 1)[0] if "/" in rel else ""
            samples.append(Sample(rel, digest, st.st_size, st.st_mtime_ns, label))
        if seen != cache:
            self._cache = seen
            try:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                atomic_write_json(self.cache_path, {"root": str(self.root), **seen})
            except OSError as exc:  # a full disk costs re-hashing next time, nothing else
                log.warning("cannot save the sample hash cache %s (%s)", self.cache_path, exc)
        return samples

    def _files(self) -> list[tuple[str, Path]]:
        out = []
        for dirpath, dirs, names in os.walk(self.root):
            dirs[:] = sorted(d for d in dirs if not _hidden(d))
            for name in sorted(names):
                if _hidden(name):
                    continue
                p = Path(dirpath) / name
                if p.is_file():
                    out.append((p.relative_to(self.root).as_posix(), p))
        return out

    @staticmethod
    def _lines(rel: str, path: Path, st: os.stat_result) -> list[Sample]:
        out = []
        try:
            with open(path, "rb") as f:
                for i, line in enumerate(f):
                    line = line.strip()
                    if line:
                        out.append(Sample(f"{rel}#{i}", hashlib.sha256(line).hexdigest()[:DIGEST_CHARS],
                                          len(line), st.st_mtime_ns, ""))
        except OSError as exc:
            log.warning("policy data: cannot read %s (%s)", path, exc)
        return out

    # --- what the last run trained on ---------------------------------------------------------------------
    def trained(self) -> set[str]:
        try:
            return set(self.trained_path.read_text(encoding="ascii").split())
        except (OSError, ValueError):
            return set()

    def mark_trained(self, samples: Iterable[Sample]) -> None:
        """Record ``samples`` as the data of the policy run just queued (new samples are counted against them)."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.trained_path, "\n".join(sorted({s.digest for s in samples})).encode("ascii") + b"\n")

    @staticmethod
    def new(samples: list[Sample], trained: set[str]) -> int:
        """Distinct sample contents not in ``trained``."""
        return len({s.digest for s in samples} - trained)

    # --- caps -------------------------------------------------------------------------------------------------
    def enforce(self, samples: list[Sample], max_per_label: int, max_bytes: int) -> tuple[list[Sample], int, int]:
        """Delete the oldest samples beyond ``max_per_label`` per label and beyond ``max_bytes`` in all (0: no cap).
        Only sample files of a folder data set are deleted (a line-based file is never rewritten here). Returns
        (the samples kept, samples removed, bytes removed)."""
        if not self.root.is_dir() or (not max_per_label and not max_bytes):
            return samples, 0, 0
        newest_first = sorted(samples, key=lambda s: (s.mtime_ns, s.key), reverse=True)
        keep: list[Sample] = []
        doomed: list[Sample] = []
        per_label: dict[str, int] = {}
        total = 0
        for s in newest_first:
            n = per_label.get(s.label, 0)
            if (max_per_label and n >= max_per_label) or (max_bytes and total + s.size > max_bytes):
                doomed.append(s)
                continue
            per_label[s.label] = n + 1
            total += s.size
            keep.append(s)
        removed = removed_bytes = 0
        for s in doomed:
            try:
                (self.root / s.key).unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("policy data: cannot remove %s beyond the caps (%s); kept", s.key, exc)
                keep.append(s)
                continue
            removed += 1
            removed_bytes += s.size
        if removed:
            log.info("policy data: removed the %d oldest sample(s) (%d bytes) beyond the caps "
                     "(max_samples_per_label %d, max_bytes %d)", removed, removed_bytes, max_per_label, max_bytes)
        return sorted(keep, key=lambda s: s.key), removed, removed_bytes


def _digest_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()[:DIGEST_CHARS]
