"""On-disk cache of text embeddings: one memory-mapped float16 table per encoder setting.

Layout of one entry, ``<root>/<key>/``::

    meta.json     the key fields (model fingerprint, pooling, max_length, dtype, format), d, the
                  stored vectors' dtype (``vector_dtype``), an ``entry_id`` (a new one each time
                  the entry is (re)created), and the model name that created the entry (for
                  people; not part of the key)
    vectors.f16   raw float16 rows, [R, d], row-major (read through numpy.memmap)
    keys.bin      16-byte BLAKE2b digests of the texts, one per text
    lengths.i32   ragged entries only: int32 rows per text (token states: one row per token)
    lock          fcntl lock file: one writer at a time (DDP ranks, parallel runs)

A pooled entry holds one vector per text (text i <-> vector row i). A *ragged* entry
(``ragged=True``, used for token states) holds a variable number of rows per text, stored
back to back: text i owns rows ``offsets[i] : offsets[i] + lengths[i]``.

``key`` hashes the key fields, so a different model file, pooling or ``max_length`` lands in
another entry (a cache miss), while the same weights under another path or name share one.
Rows are only ever appended, vectors before digests; on open, both files are cut to the rows
complete in both, so an interrupted run loses at most its last unfinished chunk.

Every read (each :meth:`EmbeddingCache.locked`) first checks ``meta.json`` against what this
cache expects: the key fields (model fingerprint, pooling, ``max_length``, dtype, layer,
ragged), the vector width ``d`` and the stored dtype (float16). An entry that differs in any of
them (a copied or hand-edited directory, a hash collision, another version's layout), or whose
data files have no ``meta.json``, is never read: its rows are dropped and recomputed, with a
one-line :class:`CacheMismatchWarning` naming what differed. A reader whose entry was recreated
by another process in the meantime (a new ``entry_id``) re-reads its index from scratch.

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
import warnings
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
VECTOR_DTYPE = "float16"
_F16_MAX = float(np.finfo(np.float16).max)


class CacheMismatchWarning(UserWarning):
    """A cache entry on disk does not match the encoder setting reading it; it is recomputed."""


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

    def __init__(self, root: str | Path, key: dict[str, Any], dim: int, label: str = "model",
                 ragged: bool = False) -> None:
        self.key = {"format": FORMAT, **key, **({"ragged": True} if ragged else {})}
        self.dim = int(dim)
        self.label = label
        self.ragged = bool(ragged)
        blob = json.dumps(self.key, sort_keys=True).encode()
        self.path = Path(root).expanduser() / hashlib.sha256(blob).hexdigest()[:24]
        self._index: dict[bytes, int] = {}
        self._rows = 0          # texts
        self._vrows = 0         # vector rows (== texts unless ragged)
        self._lengths = np.zeros(0, dtype=np.int64)
        self._offsets = np.zeros(1, dtype=np.int64)   # [texts + 1] cumulative rows (ragged)
        self._mmap: np.memmap | None = None
        self._entry_id: str | None = None   # meta.json's entry_id when the index was read

    # -- files -----------------------------------------------------------------------------------
    @property
    def vectors_file(self) -> Path:
        return self.path / "vectors.f16"

    @property
    def keys_file(self) -> Path:
        return self.path / "keys.bin"

    @property
    def lengths_file(self) -> Path:
        return self.path / "lengths.i32"

    def _read_lengths(self, start: int = 0) -> np.ndarray:
        if not self.lengths_file.exists():
            return np.zeros(0, dtype=np.int64)
        with open(self.lengths_file, "rb") as fh:
            fh.seek(4 * start)
            return np.frombuffer(fh.read(), dtype=np.int32).astype(np.int64)

    def __len__(self) -> int:
        return self._rows

    @property
    def meta_file(self) -> Path:
        return self.path / "meta.json"

    def _expected_meta(self) -> dict[str, Any]:
        """The fields ``meta.json`` must hold for this cache to read the entry."""
        return {**self.key, "dim": self.dim, "vector_dtype": VECTOR_DTYPE}

    def _write_meta(self) -> None:
        meta_d = {**self._expected_meta(), "created_by": self.label, "entry_id": os.urandom(8).hex()}
        tmp = self.meta_file.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(meta_d, indent=2, sort_keys=True), encoding="utf-8")
        tmp.replace(self.meta_file)

    def _read_meta(self) -> dict[str, Any] | None:
        try:
            meta = json.loads(self.meta_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) else None

    def _mismatch(self, meta: dict[str, Any] | None) -> str | None:
        """Why the entry on disk cannot be read by this cache, or ``None`` when it can."""
        if meta is None:
            return "meta.json is missing or unreadable"
        meta = {"vector_dtype": VECTOR_DTYPE, **meta}   # entries written before the field: float16
        if "ragged" not in meta and not self.ragged:
            meta["ragged"] = False
        want = {**self._expected_meta(), "ragged": self.ragged}
        diff = [f"{k} {meta.get(k, '<missing>')!r} (expected {v!r})" for k, v in want.items()
                if meta.get(k, "<missing>") != v]
        diff += [f"{k} {v!r} (expected none)" for k, v in meta.items()
                 if k not in want and k not in ("created_by", "entry_id")]
        return ", ".join(diff) or None

    def _validate_entry(self) -> None:
        """Check ``meta.json`` against this cache (call holding the lock); a mismatching entry's
        rows are dropped (recomputed later) with a :class:`CacheMismatchWarning`."""
        has_data = any(f.exists() for f in (self.vectors_file, self.keys_file, self.lengths_file))
        meta = self._read_meta()
        why = self._mismatch(meta)
        if why is not None:
            if has_data:
                warnings.warn(f"text embedding cache {self.path} does not match this encoder setting ({why}); "
                              "its rows are ignored and recomputed", CacheMismatchWarning, stacklevel=4)
                for f in (self.vectors_file, self.keys_file, self.lengths_file):
                    f.unlink(missing_ok=True)
            self._write_meta()
            meta = self._read_meta()
        entry_id = (meta or {}).get("entry_id")
        if entry_id != self._entry_id:   # recreated since this object last read it: start over
            self._index, self._rows, self._vrows, self._mmap = {}, 0, 0, None
            self._lengths, self._offsets = np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64)
            self._entry_id = entry_id

    @contextlib.contextmanager
    def locked(self) -> Iterator[EmbeddingCache]:
        """Hold the entry's write lock (creating the entry), check ``meta.json`` against this
        cache (see the module docstring) and refresh the index from disk."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / "lock", "a+b") as fh:
            if fcntl is not None:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                self._validate_entry()
                self._repair()
                self.refresh()
                yield self
            finally:
                if fcntl is not None:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _repair(self) -> None:
        """Cut the files to the texts complete in all of them (after an interrupted append)."""
        row_bytes = 2 * self.dim
        nv = self.vectors_file.stat().st_size // row_bytes if self.vectors_file.exists() else 0
        nk = self.keys_file.stat().st_size // DIGEST if self.keys_file.exists() else 0
        if self.ragged:
            lengths = self._read_lengths()
            ends = np.cumsum(lengths[:nk])
            n = int(np.searchsorted(ends, nv, side="right"))      # texts whose rows are all written
            n_vec = int(ends[n - 1]) if n else 0
            files = ((self.vectors_file, n_vec * row_bytes), (self.keys_file, n * DIGEST),
                     (self.lengths_file, n * 4))
        else:
            n = min(nv, nk)
            files = ((self.vectors_file, n * row_bytes), (self.keys_file, n * DIGEST))
        for f, size in files:
            if f.exists() and f.stat().st_size != size:
                os.truncate(f, size)

    def refresh(self) -> None:
        """Re-read the digests appended since the last read (by this or another process)."""
        if not self.keys_file.exists():
            self._index, self._rows, self._vrows, self._mmap = {}, 0, 0, None
            self._lengths, self._offsets = np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64)
            return
        row_bytes = 2 * self.dim
        nv = self.vectors_file.stat().st_size // row_bytes if self.vectors_file.exists() else 0
        with open(self.keys_file, "rb") as fh:
            fh.seek(self._rows * DIGEST)
            blob = fh.read()
        if self.ragged:
            lengths = self._read_lengths(self._rows)
            ends = self._vrows + np.cumsum(lengths)
            new = min(len(blob) // DIGEST, int(np.searchsorted(ends, nv, side="right")))
            lengths = lengths[:new]
        else:
            new = min(len(blob) // DIGEST, nv - self._rows)
            lengths = np.ones(max(new, 0), dtype=np.int64)
        for i in range(max(new, 0)):
            self._index.setdefault(blob[i * DIGEST:(i + 1) * DIGEST], self._rows + i)
        if new > 0:
            self._rows += new
            self._vrows += int(lengths.sum())
            self._lengths = np.concatenate([self._lengths, lengths])
            self._offsets = np.concatenate([self._offsets, self._offsets[-1] + np.cumsum(lengths)])
            self._mmap = None

    # -- reading and writing ---------------------------------------------------------------------------
    def lookup(self, texts: Sequence[str]) -> np.ndarray:
        """Row of each text in :meth:`vectors`, ``-1`` where not cached. Returns ``[n]`` int64."""
        get = self._index.get
        return np.fromiter((get(text_digest(t), -1) for t in texts), dtype=np.int64, count=len(texts))

    def vectors(self) -> np.ndarray:
        """The cached rows as a read-only memory map, ``[R, d]`` float16 (ragged: every text's
        rows back to back; see :meth:`spans`)."""
        if self._vrows == 0:
            return np.zeros((0, self.dim), dtype=np.float16)
        if self._mmap is None or self._mmap.shape[0] != self._vrows:
            self._mmap = np.memmap(self.vectors_file, dtype=np.float16, mode="r", shape=(self._vrows, self.dim))
        return self._mmap

    def spans(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(offsets, lengths)`` ``[n]`` int64 of texts ``rows`` (from :meth:`lookup`) in :meth:`vectors`."""
        rows = np.asarray(rows, dtype=np.int64)
        return self._offsets[rows], self._lengths[rows]

    def append(self, texts: Sequence[str], vectors: np.ndarray, lengths: Sequence[int] | None = None) -> None:
        """Append the embeddings of ``texts`` (call inside :meth:`locked`).

        Args:
            texts: ``n`` texts.
            vectors: ``[n, d]``; ragged entries: ``[sum(lengths), d]``, each text's rows in turn.
            lengths: ragged entries only: ``[n]`` rows per text (each >= 1).

        Values are clipped to the float16 range; texts already cached are skipped.

        Raises:
            ValueError: shapes that do not match ``texts`` / ``lengths`` / ``d``.
        """
        vectors = np.asarray(vectors, dtype=np.float32)
        if self.ragged:
            if lengths is None or len(lengths) != len(texts):
                raise ValueError(f"a ragged cache needs one length per text ({len(texts)})")
            lens = np.asarray(lengths, dtype=np.int64)
            if (lens < 1).any() or vectors.shape != (int(lens.sum()), self.dim):
                raise ValueError(f"expected [{int(lens.sum())}, {self.dim}] rows for lengths summing to "
                                 f"{int(lens.sum())} (each >= 1), got {list(vectors.shape)}")
        else:
            if lengths is not None:
                raise ValueError("lengths are only for ragged caches")
            lens = np.ones(len(texts), dtype=np.int64)
            if vectors.shape != (len(texts), self.dim):
                raise ValueError(f"expected [{len(texts)}, {self.dim}] embeddings, got {list(vectors.shape)}")
        digests = [text_digest(t) for t in texts]
        keep = [i for i, d in enumerate(digests) if d not in self._index]
        # the same text twice in one call: keep the first
        seen: set[bytes] = set()
        keep = [i for i in keep if not (digests[i] in seen or seen.add(digests[i]))]
        if not keep:
            return
        starts = np.concatenate([[0], np.cumsum(lens)])
        sel = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in keep])
        block = np.clip(np.nan_to_num(vectors[sel]), -_F16_MAX, _F16_MAX).astype(np.float16)
        with open(self.vectors_file, "ab") as fh:
            fh.write(block.tobytes())
            fh.flush()
            os.fsync(fh.fileno())
        if self.ragged:
            with open(self.lengths_file, "ab") as fh:
                fh.write(lens[keep].astype(np.int32).tobytes())
        with open(self.keys_file, "ab") as fh:
            fh.write(b"".join(digests[i] for i in keep))
        for j, i in enumerate(keep):
            self._index[digests[i]] = self._rows + j
        kept = lens[keep]
        self._rows += len(keep)
        self._vrows += int(kept.sum())
        self._lengths = np.concatenate([self._lengths, kept])
        self._offsets = np.concatenate([self._offsets, self._offsets[-1] + np.cumsum(kept)])
        self._mmap = None
