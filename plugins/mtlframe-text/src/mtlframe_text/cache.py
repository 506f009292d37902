"""On-disk cache of text embeddings: one memory-mapped float16 table per encoder setting.

Layout of one entry, ``<root>/<key>/``::

    meta.json     the key fields (model fingerprint, pooling, max_length, dtype, format), d, and
                  the model name that created the entry (for people; not part of the key)
    vectors.f16   raw float16 rows, [R, d], row-major (read through numpy.memmap)
    keys.bin      R x 16-byte BLAKE2b digests of the texts, row i <-> vector row i
    lock          fcntl lock file: one writer at a time (DDP ranks, parallel runs)

``key`` hashes the key fields, so a different model file, pooling or ``max_length`` lands in
another entry (a cache miss), while the same weights under another path or name share one.
Rows are only ever appended, vectors before digests; on open, both files are cut to the rows
complete in both, so an interrupted run loses at most its last unfinished chunk.

Example::

    cache = EmbeddingCache("~/.cache/mtlframe/text", {"model": "ab12...", "pooling": "mean",
                                                     "max_length": 128}, dim=384)
    with cache.locked():
        rows = cache.lookup(["a dress", "a skirt"])     # [2] int64, -1 = not cached
        cache.append(["a dress"], np.zeros((1, 384)))
    cache.vectors()[cache.lookup(["a dress"])]          # [1, 384] float16
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

try:  # POSIX advisory locks; elsewhere writers are not serialized
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

FORMAT = 1
DIGEST = 16
_F16_MAX = float(np.finfo(np.float16).max)


def default_cache_dir() -> Path:
    """``$MTLFRAME_CACHE/text`` if set, else ``~/.cache/mtlframe/text``."""
    env = os.environ.get("MTLFRAME_CACHE")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "mtlframe") / "text"


def text_digest(text: str) -> bytes:
    """16-byte BLAKE2b digest of a text (UTF-8)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=DIGEST).digest()


class EmbeddingCache:
    """An append-only ``text -> float16 [d]`` table on disk for one encoder setting.

    Args:
        root: the cache directory (holds one sub-directory per key).
        key: what the embeddings depend on besides the text (JSON-serializable); hashed into the
            entry's directory name.
        dim: embedding width ``d``.
        label: the model's name, recorded in ``meta.json`` for people (not part of the key).
    """

    def __init__(self, root: str | Path, key: dict[str, Any], dim: int, label: str = "model") -> None:
        self.key = {"format": FORMAT, **key}
        self.dim = int(dim)
        self.label = label
        blob = json.dumps(self.key, sort_keys=True).encode()
        self.path = Path(root).expanduser() / hashlib.sha256(blob).hexdigest()[:24]
        self._index: dict[bytes, int] = {}
        self._rows = 0
        self._mmap: np.memmap | None = None

    # -- files -----------------------------------------------------------------------------------
    @property
    def vectors_file(self) -> Path:
        return self.path / "vectors.f16"

    @property
    def keys_file(self) -> Path:
        return self.path / "keys.bin"

    def __len__(self) -> int:
        return self._rows

    @contextlib.contextmanager
    def locked(self) -> Iterator[EmbeddingCache]:
        """Hold the entry's write lock (creating the entry) and refresh the index from disk."""
        self.path.mkdir(parents=True, exist_ok=True)
        meta = self.path / "meta.json"
        if not meta.exists():
            tmp = meta.with_suffix(f".tmp{os.getpid()}")
            meta_d = {**self.key, "dim": self.dim, "created_by": self.label}
            tmp.write_text(json.dumps(meta_d, indent=2, sort_keys=True), encoding="utf-8")
            tmp.replace(meta)
        with open(self.path / "lock", "a+b") as fh:
            if fcntl is not None:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                self._repair()
                self.refresh()
                yield self
            finally:
                if fcntl is not None:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _repair(self) -> None:
        """Cut both files to the rows complete in both (after an interrupted append)."""
        row_bytes = 2 * self.dim
        nv = self.vectors_file.stat().st_size // row_bytes if self.vectors_file.exists() else 0
        nk = self.keys_file.stat().st_size // DIGEST if self.keys_file.exists() else 0
        n = min(nv, nk)
        for f, size in ((self.vectors_file, n * row_bytes), (self.keys_file, n * DIGEST)):
            if f.exists() and f.stat().st_size != size:
                os.truncate(f, size)

    def refresh(self) -> None:
        """Re-read the digests appended since the last read (by this or another process)."""
        if not self.keys_file.exists():
            self._index, self._rows, self._mmap = {}, 0, None
            return
        row_bytes = 2 * self.dim
        nv = self.vectors_file.stat().st_size // row_bytes if self.vectors_file.exists() else 0
        with open(self.keys_file, "rb") as fh:
            fh.seek(self._rows * DIGEST)
            blob = fh.read()
        new = min(len(blob) // DIGEST, nv - self._rows)
        for i in range(max(new, 0)):
            self._index.setdefault(blob[i * DIGEST:(i + 1) * DIGEST], self._rows + i)
        if new > 0:
            self._rows += new
            self._mmap = None

    # -- reading and writing ---------------------------------------------------------------------------
    def lookup(self, texts: Sequence[str]) -> np.ndarray:
        """Row of each text in :meth:`vectors`, ``-1`` where not cached. Returns ``[n]`` int64."""
        get = self._index.get
        return np.fromiter((get(text_digest(t), -1) for t in texts), dtype=np.int64, count=len(texts))

    def vectors(self) -> np.ndarray:
        """The cached embeddings as a read-only memory map, ``[R, d]`` float16."""
        if self._rows == 0:
            return np.zeros((0, self.dim), dtype=np.float16)
        if self._mmap is None or self._mmap.shape[0] != self._rows:
            self._mmap = np.memmap(self.vectors_file, dtype=np.float16, mode="r", shape=(self._rows, self.dim))
        return self._mmap

    def append(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Append ``[n, d]`` embeddings of ``texts`` (call inside :meth:`locked`).

        Values are clipped to the float16 range; texts already cached are skipped.
        """
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(texts), self.dim):
            raise ValueError(f"expected [{len(texts)}, {self.dim}] embeddings, got {list(vectors.shape)}")
        digests = [text_digest(t) for t in texts]
        keep = [i for i, d in enumerate(digests) if d not in self._index]
        # the same text twice in one call: keep the first
        seen: set[bytes] = set()
        keep = [i for i in keep if not (digests[i] in seen or seen.add(digests[i]))]
        if not keep:
            return
        block = np.clip(np.nan_to_num(vectors[keep]), -_F16_MAX, _F16_MAX).astype(np.float16)
        with open(self.vectors_file, "ab") as fh:
            fh.write(block.tobytes())
            fh.flush()
            os.fsync(fh.fileno())
        with open(self.keys_file, "ab") as fh:
            fh.write(b"".join(digests[i] for i in keep))
        for j, i in enumerate(keep):
            self._index[digests[i]] = self._rows + j
        self._rows += len(keep)
        self._mmap = None
