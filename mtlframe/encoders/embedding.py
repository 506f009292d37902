"""``embedding``: categorical (and multi-categorical) features -> learned embeddings.

All single-valued categorical features share one fused table (one lookup per batch);
multi-categorical features (``"Action|Comedy"``) are mean-pooled with ``EmbeddingBag``.
With ``task_specific`` the encoder also keeps one set of tables per task beside the shared set
(STEM's task-specific embeddings; see the ``stem`` backbone).
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from mtlframe.encoders.base import Encoder, release_column
from mtlframe.errors import ArgumentError
from mtlframe.features import FeatureInfo
from mtlframe.layers import FusedEmbedding


class EmbeddingEncoder(Encoder):
    """Embeds categorical features; outputs their concatenation.

    Args:
        features: categorical / multi-categorical columns to embed.
        dim: embedding width ``d`` per feature.
        sparse: sparse gradients for the tables: a step reads and updates only the rows of the
            batch instead of every row (the optimizer pairs Adam/AdamW with ``SparseAdam`` for
            them; see :mod:`mtlframe.optim`). Worth it for tables of 10^5 rows and more. The tables
            then get no weight decay; gradient clipping and gradient-level combiners that balance
            the encoders (``model.shared`` other than ``backbone``) are refused.
        task_specific: also give tasks their own embedding tables (of the same features and
            width): ``true`` for every task, or a list of task names. The shared tables stay and
            give :meth:`forward`'s output; each listed task's tables give its own encoding
            (:meth:`forward_tasks`), which only a backbone that reads per-task inputs consumes
            (``stem``; any other backbone is a recipe error). A task's tables are trained by that
            task's loss alone, so tasks' gradients never meet in them; the shared tables are
            :meth:`shared_parameters`, the task tables are not. Memory: ``1 + len(tasks)`` copies
            of the tables (and of their optimizer state); list only some tasks to save it (the
            others read the shared tables). ``sparse`` applies to every copy.
        feature_info: injected (vocabulary sizes).
        task_names: injected (the recipe's tasks, for ``task_specific``).

    Shape: batch -> ``[B, F * d]`` with ``F = len(features)``; :meth:`forward_tasks`:
    ``{task: [B, F * d]}`` for the ``task_specific`` tasks (``{}`` without them).

    Raises:
        ValueError: ``task_specific`` names a task the recipe does not have, or repeats one.

    Id 0 of a categorical feature is its out-of-vocabulary / missing row (learned). For a
    multi-categorical feature id 0 is padding (ignored) and id 1 out-of-vocabulary.

    Example::

        enc = EmbeddingEncoder(["user_id", "item_id"], dim=16, feature_info=info)
        out = enc(batch)  # [B, 32]
    """

    accepts = frozenset({"categorical", "multi_categorical"})
    injected = ("feature_info", "task_names")

    def __init__(self, features: list[str], dim: int = 16, sparse: bool = False,
                 task_specific: bool | list[str] = False, *, feature_info: Mapping[str, FeatureInfo],
                 task_names: Sequence[str] = ()) -> None:
        super().__init__()
        if dim < 1:
            raise ArgumentError("dim", f"dim must be >= 1, got {dim}")
        self.features = list(features)
        self.single = [f for f in self.features if feature_info[f].type == "categorical"]
        self.multi = [f for f in self.features if feature_info[f].type == "multi_categorical"]
        self.key = "cat:" + ",".join(self.single)
        self.per_task = _task_specific(task_specific, task_names)

        def tables() -> tuple[FusedEmbedding | None, nn.ModuleDict]:
            fused = (FusedEmbedding([feature_info[f].cardinality for f in self.single], dim, sparse=sparse)
                     if self.single else None)
            bags = nn.ModuleDict({
                f: nn.EmbeddingBag(feature_info[f].cardinality, dim, mode="mean", padding_idx=0, sparse=sparse)
                for f in self.multi})
            for bag in bags.values():
                nn.init.normal_(bag.weight, std=0.01)
            return fused, bags

        self.fused, self.bags = tables()                           # the shared tables
        self.task_tables = nn.ModuleDict()                         # {task: {"fused": ..., "bags": ...}}
        for t in self.per_task:
            fused, bags = tables()
            self.task_tables[t] = nn.ModuleDict({"bags": bags, **({"fused": fused} if fused is not None else {})})
        self.output_dim = dim * len(self.features)
        self.input_keys = ([self.key] if self.single else []) + self.multi

    def feature_slices(self) -> dict[str, tuple[int, int]]:
        """Each feature's ``d`` columns: the single-valued features in order, then the
        multi-categorical ones (the order of :meth:`forward`'s concatenation)."""
        d = self.output_dim // max(len(self.features), 1)
        return {f: (j * d, (j + 1) * d) for j, f in enumerate([*self.single, *self.multi])}

    def featurize(self, columns: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, torch.Tensor]:
        """Stack the categorical id columns into one ``[N, F]`` tensor with table offsets added.

        int32 while the fused table has fewer than 2^31 - 1 rows (else int64). Stored feature-major
        (an ``[F, N]`` block seen as ``[N, F]``), filled and released (:func:`release_column`) one
        column at a time, so the inputs and the output are never both held in full; batches
        gathered from it are row-major (:mod:`mtlframe.batching`).
        """
        if not self.single:
            return {}
        total = sum(self.fused.cardinalities)
        dtype = torch.int32 if total < 2**31 - 1 else torch.int64
        n = len(columns[self.single[0]])
        ids = torch.empty((len(self.single), n), dtype=dtype)
        for j, (f, off) in enumerate(zip(self.single, self.fused.offsets.tolist())):
            torch.add(torch.as_tensor(columns[f]), off, out=ids[j])
            release_column(columns, f)
        return {self.key: ids.t()}

    def _embed(self, fused: FusedEmbedding | None, bags: nn.ModuleDict,
               batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        if fused is not None:
            emb = fused(batch[self.key])                           # (B, F, d)
            parts.append(emb.flatten(1))                           # (B, F*d)
        for f, bag in bags.items():
            parts.append(bag(batch[f]))                            # (B, d)
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self._embed(self.fused, self.bags, batch)

    def forward_tasks(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{task: [B, F * d]}`` from each ``task_specific`` task's own tables."""
        return {t: self._embed(tables["fused"] if "fused" in tables else None,  # noqa: SIM401 (a ModuleDict)
                               tables["bags"], batch)
                for t, tables in self.task_tables.items()}

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """The shared tables (the task tables are each trained by one task)."""
        if not self.per_task:  # no task tables: every parameter is shared
            return self.parameters()
        own = {id(p) for p in self.task_tables.parameters()}
        return (p for p in self.parameters() if id(p) not in own)


def _task_specific(value: bool | Sequence[str], task_names: Sequence[str]) -> tuple[str, ...]:
    """The tasks ``task_specific`` gives their own tables (``true``: all, in ``task_names`` order)."""
    if value is False:
        return ()
    if value is True:
        if not task_names:
            raise ValueError("task_specific: true needs the task names (injected by the builder)")
        return tuple(task_names)
    names = list(value)
    unknown = [t for t in names if t not in task_names]
    if unknown:
        raise ValueError(f"task_specific names {', '.join(map(repr, unknown))}, not a task of the recipe "
                         f"(tasks: {', '.join(task_names)})")
    dupes = sorted({t for t in names if names.count(t) > 1})
    if dupes:
        raise ValueError(f"task_specific lists {', '.join(map(repr, dupes))} more than once")
    if not names:
        raise ValueError("task_specific is an empty list; use false for shared tables only")
    return tuple(names)
