"""Streaming Parquet: columnar batches read from a directory of Parquet files, never all in memory.

:class:`ParquetStream` is a ``torch.utils.data.IterableDataset`` over a directory (or a list) of
Parquet files read with ``pyarrow.dataset``. It yields ``dict[str, Tensor]`` batches (numeric
columns as tensors, other columns as numpy arrays) built from whole row groups with numpy
(one permutation per column when the buffer shuffles, then slices): there is no per-row Python on
the hot path and no collate (build the
``DataLoader`` with ``batch_size=None``).

**Units of work.** The files are split into *pieces*, one per Parquet row group (a
``pyarrow.dataset`` fragment of one row group), in a fixed order
(files sorted by path, row groups in file order). A directory with fewer files than readers (2
processes x 2 workers over 3 files) is therefore still shared out; the row group is the smallest
unit that is read, so peak memory is one row group plus the shuffle buffer, independent of the
data size.

**Sharding: every row exactly once.** At each epoch all readers compute the same order of pieces
(a permutation seeded by (``seed``, epoch); identity without ``shuffle``) and see the pieces, in
that order, as one sequence of ``N`` rows. The ``S = world_size * num_workers`` readers (process
``rank``, data-loader worker ``id``; reader ``rank * num_workers + id``) take contiguous ranges of
that sequence of ``N // S`` or ``N // S + 1`` rows. A range may start or end inside a row group:
that row group is read by both neighbours, each keeping its own rows (at most ``S - 1`` row groups
read twice per epoch). So each row is read exactly once per epoch across all processes and
workers, and the shares differ by at most one row whatever the sizes of the files and row groups.

**Equal steps under DDP** (``drop_uneven=True``, for training): every process must run the same
number of steps or DDP's all-reduce waits forever. Every reader's range is cut to ``N // S`` rows,
so every reader yields the same number of batches; the at most ``S - 1`` rows left out are the last
rows of the epoch's piece order, a different set at every shuffled epoch. This is the rule of
:class:`mtlframe.batching.ColumnBatches` (training shares truncated to equal length). With
``drop_uneven=False`` (evaluation) every row is read once and the shares may differ by one row
(no padding: repeated rows would shift AUC).

**Shuffling.** By piece (above), then by a bounded buffer per reader: row groups are appended
to the buffer; once it holds more than
``buffer_rows`` rows it is permuted and full batches are taken from its front, the rest staying to
mix with the next pieces. The generator is seeded by (``seed``, epoch, reader), so an epoch is
reproducible and epochs differ. ``buffer_rows=0`` turns the buffer off (rows in piece order).

**Memory.** A reader holds at most ``buffer_rows + batch_size - 1`` rows plus one row group
(``peak_rows`` records it after an iteration in the same process), whatever the number of files.

**Epochs.** Call :meth:`set_epoch` before each epoch (in the main process). The epoch lives in a
shared-memory tensor, so data-loader workers (persistent or not) see it. :meth:`resume_at`
starts an epoch after its first batches (a resumed run), in the uninterrupted order.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mtlframe.errors import ArgumentError, DataError

Columns = dict[str, "torch.Tensor | np.ndarray"]


@dataclass(frozen=True)
class Piece:
    """One Parquet row group: ``path``, its index ``row_group`` in the file, and its ``rows``."""

    path: str
    row_group: int
    rows: int


def list_pieces(files: Sequence[str]) -> list[Piece]:
    """The row groups of ``files`` (from the Parquet footers, through ``pyarrow.dataset``; no data
    is read), in path order.

    Raises:
        DataError: pyarrow is not installed, or a file is not Parquet (named).
    """
    try:
        import pyarrow.dataset as ds
    except ImportError:
        raise DataError("streaming Parquet needs pyarrow, which is not installed. Run `pip install pyarrow` "
                        "(or `pip install 'mtlframe[parquet]'`).") from None
    fmt = ds.ParquetFileFormat()
    pieces = []
    for path in sorted(files):
        try:
            fragment = fmt.make_fragment(path, filesystem=_local())
            fragment.ensure_complete_metadata()
        except Exception as exc:  # pyarrow raises ArrowInvalid / OSError on a bad file
            raise DataError(f"{path}: cannot read it as Parquet: {exc}") from None
        pieces += [Piece(path, g.id, g.num_rows) for g in fragment.row_groups if g.num_rows > 0]
    return pieces


def _local():
    import pyarrow.fs as pfs

    return pfs.LocalFileSystem()


def reader_range(total: int, reader: int, readers: int, drop_uneven: bool) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of the epoch's row sequence (``total`` rows) that reader ``reader`` of
    ``readers`` reads: contiguous ranges of ``total // readers`` rows, the first
    ``total % readers`` readers taking one more unless ``drop_uneven``."""
    base, extra = divmod(total, readers)
    if drop_uneven:
        return reader * base, (reader + 1) * base
    lo = reader * base + min(reader, extra)
    return lo, lo + base + (1 if reader < extra else 0)


class ParquetStream(torch.utils.data.IterableDataset):
    """Batches of a directory of Parquet files, sharded by process and data-loader worker.

    Args:
        source: a directory (every ``*.parquet`` file below it) or a list of Parquet files.
        columns: the columns to read (all columns of the first file when ``None``).
        batch_size: rows per batch ``B`` (the last batch of a reader may be shorter).
        shuffle: shuffle by piece and by the buffer at each epoch (seeded by ``seed`` + epoch).
        seed: base seed.
        buffer_rows: rows of the shuffle buffer (bounded memory; ``0`` turns it off).
        rank, world_size: this process's place under DDP.
        drop_uneven: cut every reader to the same number of rows (training under DDP).
        num_workers: the ``num_workers`` of the ``DataLoader`` that will read it, when known: gives
            the dataset a length (``len()``: batches per epoch of this process; without it ``len()``
            raises ``TypeError``, which Lightning reads as "no length"), and iterating it from
            another number of workers is an error.
        transform: applied, in the reader (the data-loader worker), to the raw columns (numpy
            ``[R]``) of each run of rows that leaves the buffer (whole batches, up to a row group
            plus the buffer's overflow), before it is cut into batches; returns ``name -> [R, ...]``
            tensors. Once per run instead of once per batch: the data module's per-batch
            preprocessing (vocabulary lookups, standardization, the encoders' ``featurize``) pays
            its fixed costs once per thousands of rows. Rows of batches left out by
            :meth:`resume_at` are not transformed. A ``DataError`` it raises is raised again for
            the first row group of the run that fails on its own, its file and row group named
            and its rows counted from the row group's first row (a run mixes shuffled rows of
            several row groups: its own row numbers would point nowhere); a transform with a
            ``source`` attribute (the text its errors start with, as the data module's ``BatchTransform``)
            gets that name there instead of a prefix.
        null_ints_as_float: an integer column with missing values in a row group comes as float64
            with NaN there, as pandas reads it (what the data module's preprocessor expects; its
            vocabulary is then keyed by the values' text, ``3`` and ``3.0`` alike), instead of an error.

    Yields:
        ``dict[str, Tensor | ndarray]``: each column ``[B]`` (numeric and boolean columns as
        tensors, others as numpy arrays).

    Raises:
        DataError: no Parquet file at ``source``, or a column missing from a file (both named);
            when iterated, a missing value in an integer or boolean column (file, column, row
            group named), or the transform's error (file, row group and rows named).
        ArgumentError: ``batch_size < 1``, ``buffer_rows < 0``, ``rank`` not in
            ``[0, world_size)``, ``num_workers < 0``; when iterated, a ``DataLoader`` with another
            number of workers than ``num_workers``.
    """

    def __init__(self, source: str | Path | Sequence[str | Path], columns: Sequence[str] | None = None,
                 batch_size: int = 1024, shuffle: bool = False, seed: int = 0, buffer_rows: int = 1 << 16,
                 rank: int = 0, world_size: int = 1, drop_uneven: bool = False,
                 num_workers: int | None = None,
                 transform: "Callable[[dict[str, np.ndarray]], dict[str, torch.Tensor]] | None" = None,
                 null_ints_as_float: bool = False) -> None:
        super().__init__()
        if batch_size < 1:
            raise ArgumentError("batch_size", f"batch_size must be at least 1, got {batch_size}")
        if buffer_rows < 0:
            raise ArgumentError("buffer_rows", f"buffer_rows must be 0 or more, got {buffer_rows}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ArgumentError("rank", f"rank must be in [0, world_size={world_size}), got {rank}")
        if num_workers is not None and num_workers < 0:
            raise ArgumentError("num_workers", f"num_workers must be 0 or more, got {num_workers}")
        self.num_workers = num_workers
        self.files = _parquet_files(source)
        self.pieces = list_pieces(self.files)
        self._piece_id = {p: i for i, p in enumerate(self.pieces)}
        self.total_rows = sum(p.rows for p in self.pieces)
        self.columns = list(columns) if columns is not None else _schema_names(self.files[0])
        _check_columns(self.files, self.columns)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.buffer_rows = buffer_rows
        self.rank = rank
        self.world_size = world_size
        self.drop_uneven = drop_uneven
        self.transform = transform
        self.null_ints_as_float = null_ints_as_float
        # [epoch, batches to leave out] in shared memory: data-loader workers see what the main
        # process sets, persistent workers included
        self._state = torch.zeros(2, dtype=torch.int64).share_memory_()
        self.peak_rows = 0

    @property
    def epoch(self) -> int:
        return int(self._state[0])

    def set_epoch(self, epoch: int) -> None:
        """The epoch of the next iteration (seeds the piece order and the buffer), from its start."""
        self._state[0], self._state[1] = epoch, 0

    def resume_at(self, epoch: int, batches: int = 0) -> None:
        """The next iteration is epoch ``epoch`` and leaves out the first ``batches`` batches this
        process's ``DataLoader`` would yield (resuming from a checkpoint written mid-epoch). The
        ``DataLoader`` takes the workers' batches in turn (worker 0, 1, ..., skipping a worker that
        has none left); each worker leaves out its share of those ``batches``. The rows are read
        again up to that point (the buffer must shuffle as it did), but not turned into tensors."""
        self._state[0], self._state[1] = epoch, max(0, int(batches))

    def rows_per_reader(self, num_workers: int = 0) -> list[int]:
        """Rows each reader of this process reads in an epoch (one entry per data-loader worker;
        one entry with ``num_workers=0``)."""
        workers = max(1, num_workers)
        readers = self.world_size * workers
        out = []
        for w in range(workers):
            lo, hi = reader_range(self.total_rows, self.rank * workers + w, readers, self.drop_uneven)
            out.append(hi - lo)
        return out

    def batches_per_epoch(self, num_workers: int = 0) -> int:
        """Batches this process yields in an epoch with ``num_workers`` data-loader workers (the
        same on every process when ``drop_uneven``)."""
        return sum(-(-n // self.batch_size) for n in self.rows_per_reader(num_workers))

    def __len__(self) -> int:
        if self.num_workers is None:
            raise TypeError("ParquetStream has a length only when built with num_workers")
        return self.batches_per_epoch(self.num_workers)

    def __iter__(self) -> Iterator[Columns]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if self.num_workers is not None and workers != max(1, self.num_workers):
            raise ArgumentError("num_workers", f"the stream was built for num_workers={self.num_workers} "
                                f"but is read by {workers} DataLoader worker(s); its length and shares "
                                f"depend on it: build it with the DataLoader's num_workers")
        return self.iter_reader(worker, workers)

    def piece_order(self, epoch: int) -> list[Piece]:
        """The pieces in the order the readers share them at ``epoch`` (the same in every reader)."""
        if not self.shuffle:
            return list(self.pieces)
        rng = np.random.default_rng([self.seed, epoch])
        return [self.pieces[i] for i in rng.permutation(len(self.pieces))]

    def iter_reader(self, worker: int, num_workers: int) -> Iterator[Columns]:
        """The batches of data-loader worker ``worker`` of ``num_workers`` in this process (what
        ``__iter__`` runs inside a worker; callable directly to simulate workers in tests)."""
        epoch, skip = int(self._state[0]), int(self._state[1])
        counts = [-(-n // self.batch_size) for n in self.rows_per_reader(num_workers)]
        skips, turn = worker_skips(counts, skip)
        # the DataLoader starts its turns at worker 0: after a resume, worker 0 plays the reader
        # whose turn came next, so the batches come in the order of an uninterrupted epoch
        role = (worker + turn) % num_workers
        left_out = [skips[role]]    # batches still to leave out (shared with _batches)
        readers = self.world_size * num_workers
        reader = self.rank * num_workers + role
        lo, hi = reader_range(self.total_rows, reader, readers, self.drop_uneven)
        rng = np.random.default_rng([self.seed, epoch, reader]) if self.shuffle and self.buffer_rows else None
        buffer: list[dict[str, np.ndarray]] = []
        held = 0
        self.peak_rows = 0
        start = 0   # first row of the current piece in the epoch's sequence
        for piece in self.piece_order(epoch):
            end = start + piece.rows
            if end > lo and start < hi:
                chunk = self._read(piece, max(lo - start, 0), min(hi, end) - start)
                buffer.append(chunk)
                held += len(next(iter(chunk.values())))
                self.peak_rows = max(self.peak_rows, held)
                # whole batches out: all of them (no buffer), or those above buffer_rows
                emit = held - held % self.batch_size if rng is None else \
                    max(held - self.buffer_rows, 0) // self.batch_size * self.batch_size
                if emit:
                    merged = _concat(buffer) if rng is None else _permute(_concat(buffer), rng)
                    yield from self._batches(merged, emit, left_out)
                    buffer, held = _rest(merged, emit)
            start = end
            if start >= hi:
                break
        if held:
            merged = _concat(buffer)
            if rng is not None:
                merged = _permute(merged, rng)
            yield from self._batches(merged, held, left_out)

    def _read(self, piece: Piece, first: int, stop: int) -> dict[str, np.ndarray]:
        import pyarrow.dataset as ds
        import pyarrow.types as pa_types

        fragment = ds.ParquetFileFormat().make_fragment(piece.path, filesystem=_local(), row_groups=[piece.row_group])
        table = fragment.to_table(columns=self.columns)
        if first or stop < piece.rows:
            table = table.slice(first, stop - first)
        for c in self.columns:
            col = table.column(c)
            if col.null_count and self.null_ints_as_float and pa_types.is_integer(col.type):
                table = table.set_column(table.schema.get_field_index(c), c, col.cast("float64"))
            elif col.null_count and (pa_types.is_integer(col.type) or pa_types.is_boolean(col.type)):
                # pyarrow would turn the column into float64 (integers) or objects (booleans)
                raise DataError(
                    f"{piece.path}: column {c!r} ({col.type}) has {col.null_count} missing value(s) in row "
                    f"group {piece.row_group}; an integer or boolean column cannot be missing when "
                    f"streamed: write missing ids as the out-of-vocabulary code 0 (as `mtlframe prepare` "
                    f"does), or store the column as float with NaN")
        cols = {c: table.column(c).to_numpy() for c in self.columns}
        if self.transform is not None:   # where each row comes from, to name it in the transform's errors
            cols[_PIECE] = np.full(table.num_rows, self._piece_id[piece], dtype=np.int32)
        return cols

    def _batches(self, cols: dict[str, np.ndarray], rows: int, left_out: list[int]) -> Iterator[Columns]:
        skip = min(left_out[0], -(-rows // self.batch_size))
        left_out[0] -= skip
        first = skip * self.batch_size
        if first >= rows:
            return
        if self.transform is not None:
            run = {k: v[first:rows] for k, v in cols.items() if k != _PIECE}
            try:
                out = self.transform(run)
            except DataError:
                self._locate(np.unique(cols[_PIECE][first:rows]))
                raise
            for s in range(0, rows - first, self.batch_size):
                yield {k: v[s:s + self.batch_size] for k, v in out.items()}
            return
        for s in range(first, rows, self.batch_size):
            e = min(s + self.batch_size, rows)
            yield {k: _tensor(v[s:e]) for k, v in cols.items()}


    def _locate(self, piece_ids: np.ndarray) -> None:
        """Raise the transform's ``DataError`` for the first of the pieces ``piece_ids`` (in file
        order) that fails on its own: its file and row group named, rows counted from the row
        group's first row (whose row in the file is given). Returns when none fails alone."""
        named = hasattr(self.transform, "source")   # the text its errors start with: the piece's name there
        before = getattr(self.transform, "source", None)
        for i in sorted(int(j) for j in piece_ids):
            piece = self.pieces[i]
            cols = self._read(piece, 0, piece.rows)
            cols.pop(_PIECE)
            start = sum(p.rows for p in self.pieces[:i] if p.path == piece.path)
            where = (f"{piece.path}, row group {piece.row_group} (rows counted from its first row, "
                     f"row {start + 1} of the file)")
            try:
                if named:
                    self.transform.source = where
                self.transform(cols)
            except DataError as exc:
                raise (DataError(str(exc)) if named else DataError(f"{where}: {exc}")) from None
            finally:
                if named:
                    self.transform.source = before


_PIECE = "\0piece"   # the reader's own column: the piece each row was read from


def worker_skips(counts: Sequence[int], batches: int) -> tuple[list[int], int]:
    """How many of the first ``batches`` batches a ``DataLoader`` yields come from each worker,
    when worker ``w`` has ``counts[w]`` batches and the workers take turns (one that has none left
    is passed over); and whose turn is next."""
    skips = [0] * len(counts)
    left = min(batches, sum(counts))
    turn = 0
    while left:
        if skips[turn] < counts[turn]:
            skips[turn] += 1
            left -= 1
        turn = (turn + 1) % len(counts)
    return skips, turn


def _tensor(v: np.ndarray) -> "torch.Tensor | np.ndarray":
    if v.dtype.kind in "biuf":
        v = np.ascontiguousarray(v)
        # Arrow's buffers are read-only; torch wants a writable array
        return torch.from_numpy(v if v.flags.writeable else v.copy())
    return v


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _permute(cols: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    order = rng.permutation(len(next(iter(cols.values()))))
    return {k: v[order] for k, v in cols.items()}


def _rest(cols: dict[str, np.ndarray], used: int) -> tuple[list[dict[str, np.ndarray]], int]:
    left = len(next(iter(cols.values()))) - used
    return ([{k: v[used:] for k, v in cols.items()}] if left else []), left


def _parquet_files(source: str | Path | Sequence[str | Path]) -> list[str]:
    if isinstance(source, (str, Path)):
        root = Path(source).expanduser()
        if root.is_dir():
            # names starting with '.' or '_' are skipped (temporary / metadata files, as pyarrow
            # datasets, Spark and mtlframe prepare skip them): the rows read are the rows prepared
            files = sorted(str(p) for p in root.rglob("*.parquet") if p.is_file() and not any(
                part.startswith((".", "_")) for part in p.relative_to(root).parts))
            if not files:
                raise DataError(f"{root}: no *.parquet file in this folder (names starting with '.' or '_' "
                                f"are skipped); give the folder that holds the Parquet files of the dataset")
            return files
        if not root.is_file():
            raise DataError(f"{root}: does not exist; give a folder of Parquet files or a file")
        return [str(root)]
    files = [str(Path(p).expanduser()) for p in source]
    if not files:
        raise DataError("no Parquet file given; give a folder of Parquet files or a list of files")
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise DataError(f"{missing[0]}: does not exist ({len(missing)} of {len(files)} files missing)")
    return sorted(files)


def _schema_names(path: str) -> list[str]:
    import pyarrow.parquet as pq

    return list(pq.read_schema(path).names)


def _check_columns(files: Sequence[str], columns: Sequence[str]) -> None:
    import pyarrow.parquet as pq

    for path in files:
        names = set(pq.read_schema(path).names)
        missing = [c for c in columns if c not in names]
        if missing:
            raise DataError(f"{path}: column {missing[0]!r} is missing (the file has "
                            f"{sorted(names)}); every Parquet file of a dataset needs the same columns")
