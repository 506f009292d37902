"""``StreamDataModule``: train from directories of Parquet files without loading them (``data.stream``).

The in-memory :class:`~mtlframe.datamodule.RecDataModule` loads the table, splits it and
materializes every split once. With ``data.stream`` nothing is loaded: the training directory
(``data.dataset.path``) and the evaluation directories (``data.stream.val`` / ``test``) are read
by :class:`~mtlframe.streaming.ParquetStream` in the data-loader workers, and each run of rows that
leaves a reader's shuffle buffer goes raw Arrow columns -> :meth:`Preprocessor.transform` -> the
encoders' ``featurize`` (:func:`~mtlframe.datamodule.materialize`) -> model-ready tensors, cut into
batches. There is no whole-table step: the preprocessor, the vocabulary sizes and the label means
the output biases start from come from the prepared state (:mod:`mtlframe.prepare`), made by
``mtlframe prepare`` or, when there is none, by :meth:`StreamDataModule.prepare_data` (rank zero;
the other processes wait for the file).

Under DDP the training stream gives every process the same number of batches
(``drop_uneven``: at most ``processes x workers - 1`` rows of an epoch left out, a different set
each shuffled epoch); evaluation reads every row once (shares differ by at most one row, metrics
synced as in memory). Each epoch's order is set at the start of the epoch
(:class:`EpochLoader`), and ``train --resume`` continues a stream mid-epoch at the exact batch
(:meth:`ParquetStream.resume_at`).
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mtlframe.datamodule import RecDataModule, materialize
from mtlframe.errors import DataError
from mtlframe.features import TaskSpec
from mtlframe.preprocess import Preprocessor


class BatchTransform:
    """Raw columns of a run of rows (numpy ``[R]``, as :class:`ParquetStream` reads them) ->
    model-ready tensors ``[R, ...]``: the fitted preprocessor's :meth:`~Preprocessor.transform`,
    then every encoder's ``featurize`` (:func:`~mtlframe.datamodule.materialize`), made contiguous
    so that batches are row slices. Runs in the data-loader workers (picklable).

    Args:
        pre: the fitted preprocessor.
        encoders, tasks: the model's encoders and tasks.
        source: the directory, named in data errors.

    Raises:
        DataError: as :meth:`Preprocessor.transform` (a value that cannot be parsed, a missing
            numeric value without a fill, a bad label; rows counted within the run).
    """

    def __init__(self, pre: Preprocessor, encoders: Sequence[torch.nn.Module], tasks: Sequence[TaskSpec],
                 source: str) -> None:
        self.pre, self.encoders, self.tasks, self.source = pre, list(encoders), list(tasks), source

    def __call__(self, raw: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        frame = pd.DataFrame({k: pd.Series(v, copy=False) for k, v in raw.items()}, copy=False)
        cols = self.pre.transform(frame, self.source)
        return materialize(self.encoders, self.tasks, cols)


class EpochLoader(torch.utils.data.DataLoader):
    """A ``DataLoader`` over a :class:`ParquetStream` that sets the stream's epoch each time an
    epoch's iteration starts (Lightning calls ``set_epoch`` only on samplers, and an
    ``IterableDataset`` has none): the epoch is ``epoch_of()`` (the trainer's current epoch), or,
    once after :meth:`resume_at`, the resumed epoch with its first batches left out."""

    def __init__(self, stream: Any, num_workers: int, pin_memory: bool, epoch_of: Callable[[], int],
                 persistent: bool = True) -> None:
        super().__init__(stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                         persistent_workers=persistent and num_workers > 0)
        self.epoch_of = epoch_of
        self.pending: tuple[int, int] | None = None
        #: epochs this loader started, in order (``(epoch, batches left out)``)
        self.started: list[tuple[int, int]] = []

    def resume_at(self, epoch: int, batches: int) -> None:
        self.pending = (int(epoch), int(batches))

    def __iter__(self):
        if self.pending is not None:
            epoch, skip = self.pending
            self.pending = None
            self.dataset.resume_at(epoch, skip)
        else:
            epoch, skip = self.epoch_of(), 0
            self.dataset.set_epoch(epoch)
        self.started.append((epoch, skip))
        return self._batches(super().__iter__())

    @staticmethod
    def _batches(batches):
        """The batches; a ``DataError`` raised in a worker is raised here with its own message
        (the ``DataLoader`` adds the worker's traceback to it)."""
        try:
            yield from batches
        except DataError as exc:
            text, marker = str(exc), f"{DataError.__module__}.{DataError.__qualname__}: "
            if "Original Traceback" not in text or marker not in text:
                raise
            raise DataError(text.rpartition(marker)[2].rstrip()) from None


def _rows(root: str, columns: Sequence[str], key: str) -> int:
    """Rows of the Parquet files of ``root`` (from their footers), once every file is known to hold
    ``columns``: checked before training, so a test directory without a label column is refused
    before the run, not after it.

    Raises:
        DataError: ``root`` does not exist or holds no Parquet file, or a file lacks one of
            ``columns`` (the file, the column and the recipe key ``key`` of the directory named).
    """
    from mtlframe.streaming import _check_columns, _parquet_files, list_pieces

    try:
        files = _parquet_files(root)
    except DataError as exc:  # a folder that does not exist or holds no Parquet file
        raise DataError(f"{exc} (check {key} in the recipe)") from None
    try:
        _check_columns(files, columns)
    except DataError as exc:
        raise DataError(f"{exc} (the {key} directory; the recipe reads these columns: {list(columns)})") from None
    return sum(p.rows for p in list_pieces(files))


class StreamDataModule(RecDataModule):
    """The data module of a recipe with ``data.stream`` (module docstring).

    ``prepare_data`` makes sure the prepared state exists (rank zero runs the prepare pass when
    there is none, printing where it saved it; the other processes wait for it); ``setup`` loads it
    (refusing a stale one or one prepared with other settings, naming what changed) and counts the
    rows of each directory from the Parquet footers; :meth:`attach_encoders` keeps the encoders for
    the per-run transform. :attr:`split_index` maps each split to ``range(rows)`` (only its length
    is used); :attr:`table` is ``None``.

    Args:
        recipe: the validated recipe (with ``data.stream``).
        dataset: the ``parquet`` dataset of ``data.dataset`` (its ``path`` is the training directory).
        preprocessor: a fitted preprocessor to use instead of the prepared state (a checkpoint's, to
            evaluate it: the splits are directories, so nothing needs fitting again; the prepared
            state, which may have been refitted since, is neither read nor made). Its label means
            are unknown: :meth:`label_priors` is empty (the checkpoint's weights replace the biases).

    Raises:
        DataError: no Parquet file in a directory, a column missing from a file, a stale prepared
            state, or a state without label sums (prepared by an earlier version: prepare again).
    """

    def __init__(self, recipe: Any, dataset: Any, preprocessor: Preprocessor | None = None) -> None:
        super().__init__(recipe, dataset)
        self.preprocessor = preprocessor
        self.columns_read: list[str] | None = None
        self.stream_cfg = recipe.config.data.stream
        self.train_dir = str(dataset.path)
        root = Path(self.train_dir)
        from mtlframe.prepare import STATE_NAME

        self.state_file = Path(self.stream_cfg.prepared) if self.stream_cfg.prepared else (
            (root if root.is_dir() else root.parent) / STATE_NAME)
        self.dirs = {"train": self.train_dir, "val": self.stream_cfg.val, "test": self.stream_cfg.test}
        self.source = self.train_dir
        self.label_sums: dict[str, tuple[float, int]] = {}
        self.loaders: dict[str, Any] = {}

    # -- Lightning hooks -------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """The prepared state, made here when missing: by global rank zero (printing that it did and
        where it saved it); the other processes wait until the file appears."""
        from lightning_fabric.utilities.rank_zero import _get_rank

        if self.preprocessor is not None or self.state_file.exists():
            return
        from mtlframe.prepare import prepare

        if (_get_rank() or 0) == 0:
            print(f"no prepared state at {self.state_file}: fitting the preprocessor over {self.train_dir} "
                  "(mtlframe prepare) ...", flush=True)
            start = time.perf_counter()
            saved = prepare(self.recipe, state_file=self.state_file)
            print(f"prepared in {time.perf_counter() - start:.1f}s, saved {saved} (reused by the next runs; "
                  "`mtlframe prepare RECIPE` refits it)", flush=True)
            return
        waited = 0.0
        while not self.state_file.exists():   # written atomically by rank zero (tmp + rename)
            if waited == 30.0:
                print(f"waiting for rank zero to prepare {self.state_file} ...", file=sys.stderr, flush=True)
            time.sleep(0.5)
            waited += 0.5

    def setup(self, stage: str | None = None) -> None:
        if self.columns_read is not None:
            return
        if self.preprocessor is None:
            self._load_prepared()
        self.columns_read = list(dict.fromkeys([*self.preprocessor.features,
                                                *(lab.column for lab in self.preprocessor.labels)]))
        keys = {"train": "data.dataset.path", "val": "data.stream.val", "test": "data.stream.test"}
        self.split_index = {k: range(_rows(d, self.columns_read, keys[k]) if d else 0) for k, d in self.dirs.items()}
        if len(self.split_index["train"]) == 0:
            raise DataError(f"{self.train_dir}: the training directory has no rows.")

    def _load_prepared(self) -> None:
        """The preprocessor and label sums of the prepared state (stale or other settings refused)."""
        from mtlframe.prepare import load_prepared, recipe_preprocessor

        expect, _ = recipe_preprocessor(self.recipe)
        self.preprocessor = load_prepared(self.state_file, self.train_dir, expect=expect)
        state = torch.load(self.state_file, weights_only=True)
        sums = state.get("label_sums")
        if sums is None:
            raise DataError(f"{self.state_file} holds no label sums (prepared by an earlier mtlframe); run "
                            "`mtlframe prepare RECIPE` again.")
        self.label_sums = {t: (float(s), int(n)) for t, (s, n) in sums.items()}

    def label_priors(self) -> dict[str, float]:
        """Per binary / regression task, the base value its output bias starts from, from the
        prepared state's label sums: the label mean (regression) or the log-odds of the positive
        rate (binary), as :meth:`RecDataModule.label_priors` computes on the training split."""
        out = {}
        for t in self.task_specs():
            if t.type in ("multiclass", "retrieval") or not self.label_sums.get(t.name, (0, 0))[1]:
                continue
            total, count = self.label_sums[t.name]
            m = total / count
            if t.type == "binary":
                m = min(max(m, 1e-4), 1 - 1e-4)
                m = float(np.log(m / (1 - m)))
            out[t.name] = m
        return out

    def attach_encoders(self, encoders: Sequence[torch.nn.Module], tasks: Sequence[TaskSpec], sampler=None) -> None:
        """Keep the encoders and tasks for the transform the readers run (nothing is featurized now)."""
        self.sampler = sampler
        self.encoders, self.tasks = list(encoders), list(tasks)

    # -- dataloaders -------------------------------------------------------------------------
    def stream(self, split: str, num_workers: int | None = None):
        """The :class:`ParquetStream` of ``split`` for this process (training: shuffled, equal
        shares; evaluation: every row once), transforming its rows with :class:`BatchTransform`."""
        from mtlframe.streaming import ParquetStream

        rank, world = self._dist()
        workers = self.stream_cfg.workers if num_workers is None else num_workers
        train = split == "train"
        batch = self.cfg.batch_size if train else (self.cfg.eval_batch_size or max(self.cfg.batch_size, 4096))
        return ParquetStream(self.dirs[split], columns=self.columns_read, batch_size=batch, shuffle=train,
                             seed=self.recipe.config.seed, buffer_rows=self.stream_cfg.buffer_rows if train else 0,
                             rank=rank, world_size=world, drop_uneven=train, num_workers=workers,
                             transform=BatchTransform(self.preprocessor, self.encoders, self.tasks,
                                                      str(self.dirs[split])),
                             null_ints_as_float=True)   # as pandas (and so prepare) reads them

    def eval_batches_per_process(self, split: str, batch_size: int, world: int) -> list[int]:
        """Batches of evaluation directory ``split`` that each of ``world`` processes runs at
        ``batch_size``: every data-loader worker of a process reads its own contiguous share
        (:func:`~mtlframe.streaming.reader_range`, nothing dropped) and cuts it into batches."""
        from mtlframe.streaming import reader_range

        rows = len(self.split_index.get(split, ()))
        workers = max(1, self.stream_cfg.workers)
        readers = world * workers
        return [sum(-(-(hi - lo) // batch_size) for lo, hi in
                    (reader_range(rows, r * workers + w, readers, False) for w in range(workers)))
                for r in range(world)]

    def _loader(self, split: str) -> EpochLoader:
        """The loader of ``split``.

        Raises:
            DataError: an evaluation directory with fewer rows than processes (some would have
                none, which Lightning refuses deep in its loop; every process raises it).
        """
        workers = self.stream_cfg.workers
        _, world = self._dist()
        rows = len(self.split_index[split])
        if split != "train" and 0 < rows < world:
            raise DataError(f"{self.dirs[split]} (data.stream.{split}) holds {rows} row(s) for {world} processes: "
                            f"each process evaluates its own share, and one would have none. Give the "
                            f"directory at least {world} rows, or evaluate with fewer processes.")
        trainer = getattr(self, "trainer", None)
        # evaluation workers end with each pass: they do not hold memory while training runs
        loader = EpochLoader(self.stream(split, workers), workers, self._pin(),
                             lambda: int(trainer.current_epoch) if trainer is not None else 0,
                             persistent=split == "train")
        self.loaders[split] = loader
        return loader

    def train_dataloader(self) -> EpochLoader:
        loader = self._loader("train")
        if self.resume_position is not None:  # the epoch's order, its trained batches left out
            loader.resume_at(*self.resume_position)
            self.resume_position = None
        return loader

    def val_dataloader(self) -> EpochLoader:
        return self._loader("val")

    def test_dataloader(self) -> EpochLoader:
        return self._loader("test")
