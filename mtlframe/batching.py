"""Columnar batching: slices of pre-built tensors, no per-row Python, no collate.

Training batches are contiguous views of rows gathered in blocks of the epoch's permutation (one
``index_select`` per column for every block of about 64K rows, then views), so a shuffled epoch
never holds a second copy of the data: its extra memory is one block. Columns may be
feature-major (an ``[F, N]`` block seen as ``[N, F]``, as the data module stores stacked encoder
inputs); blocks are always row-major and contiguous. Under DDP each process takes a strided share
of the rows; training shares are truncated to equal length (every process must run the same number of steps), evaluation shares
are not padded (padding with repeated rows would shift AUC).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import torch

Columns = dict[str, torch.Tensor]

#: rows gathered at once when iterating a permutation (rounded to whole batches)
GATHER_ROWS = 1 << 16


def num_rows(columns: Mapping[str, torch.Tensor]) -> int:
    return int(next(iter(columns.values())).shape[0]) if columns else 0


def feature_major(v: torch.Tensor) -> bool:
    """Whether ``v`` is an ``[N, F]`` view of a contiguous ``[F, N]`` block (``F > 1``)."""
    return v.ndim == 2 and v.shape[1] > 1 and v.stride() == (1, v.shape[0])


def _rows_of(v: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    if not feature_major(v):
        return v.index_select(0, index)
    # one gather per feature (each from a contiguous [N] row), then one transpose to row-major
    # [B, F]: ~4x faster than index_select on the strided view
    block = v.t()
    out = torch.empty((v.shape[1], len(index)), dtype=v.dtype)
    for j in range(v.shape[1]):
        torch.index_select(block[j], 0, index, out=out[j])
    return out.t().contiguous()


def id_codes(column: object) -> torch.Tensor:
    """A preprocessed id column (categorical codes; a tensor or a numpy array) as int64 ``[N]``."""
    import numpy as np

    return torch.as_tensor(np.asarray(column)).reshape(-1).long()


def take(columns: Mapping[str, torch.Tensor], index: torch.Tensor) -> Columns:
    """Rows ``index`` of every column (one ``index_select`` per column, or per feature of a
    feature-major column); the results are contiguous."""
    return {k: _rows_of(v, index) for k, v in columns.items()}


class ColumnBatches:
    """An iterable of ``dict[str, Tensor]`` batches over columnar tensors.

    Args:
        columns: ``name -> [N, ...]`` tensors (or a callable returning them, evaluated once per
            epoch; samplers use this to resample the training data).
        batch_size: rows per batch ``B``.
        shuffle: permute the rows at every epoch (seeded by ``seed`` + epoch).
        seed: base seed of the permutation.
        rank, world_size: this process's share under DDP.
        drop_uneven: truncate the shares to equal length (training under DDP).
        pin_memory: pin each epoch's permuted columns (faster host-to-GPU copies).

    Resuming (``mtlframe train --resume``): :meth:`resume_at` sets the epoch of the next
    iteration and a number of its first batches to leave out, so a run resumed from a checkpoint
    written in the middle of an epoch continues at the exact batch (the permutation is a function
    of ``seed`` + epoch, so it is the same).
    """

    def __init__(self, columns: Columns | Callable[[int], Columns], batch_size: int, shuffle: bool = False,
                 seed: int = 0, rank: int = 0, world_size: int = 1, drop_uneven: bool = False,
                 pin_memory: bool = False) -> None:
        self._columns = columns
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_uneven = drop_uneven
        self.pin_memory = pin_memory
        self.epoch = 0
        self._running: int | None = None          # the epoch being iterated, if any
        self._skip = 0                            # batches of the next iteration to leave out (resume)

    def resume_at(self, epoch: int, batches: int = 0) -> None:
        """The next iteration is epoch ``epoch`` (0-based) and starts after its first ``batches`` batches."""
        self.epoch, self._skip = int(epoch), max(0, int(batches))

    def _get(self, epoch: int) -> Columns:
        return self._columns(epoch) if callable(self._columns) else self._columns

    def _share(self, n: int) -> int:
        if self.world_size == 1:
            return n
        if self.drop_uneven:
            return n // self.world_size
        return len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        # the epoch being iterated (Lightning asks for the length after starting an epoch; asking
        # for the next epoch's would build a resampled epoch early, and one too many at the end)
        n = num_rows(self._get(self.epoch if self._running is None else self._running))
        share = self._share(n)
        return (share + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[Columns]:
        cols = self._get(self.epoch)
        n = num_rows(cols)
        index: torch.Tensor | None = None
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            index = torch.randperm(n, generator=g)
        if self.world_size > 1:
            base = index if index is not None else torch.arange(n)
            stop = self._share(n) * self.world_size if self.drop_uneven else n
            index = base[self.rank:stop:self.world_size]
        self._running = self.epoch
        self.epoch += 1
        total = len(index) if index is not None else n
        block = max(1, GATHER_ROWS // self.batch_size) * self.batch_size
        first, self._skip = self._skip * self.batch_size, 0   # rows of the batches left out (resume)
        try:
            for lo in range(first, total, block):
                part = take(cols, index[lo:lo + block]) if index is not None else {
                    k: v[lo:lo + block].contiguous() for k, v in cols.items()}
                if self.pin_memory and torch.cuda.is_available():
                    part = {k: v.pin_memory() for k, v in part.items()}
                for start in range(0, num_rows(part), self.batch_size):
                    yield {k: v[start:start + self.batch_size] for k, v in part.items()}
        finally:
            self._running = None
