"""The encoder contract: batch columns -> one ``[B, d]`` tensor (plus, optionally, one per task)."""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import ClassVar

import numpy as np
import torch
from torch import nn


def release_column(columns: Mapping[str, object], key: str) -> None:
    """Tell the data module that ``featurize`` has finished reading ``columns[key]``.

    When the data module owns the columns and no later encoder reads ``key``, the column is
    dropped (and its memory returned) at once, so an encoder that copies its inputs one column at
    a time never holds all of them beside its output. Otherwise (plain dicts, the column is still
    needed) this does nothing; ``columns[key]`` must not be read afterwards either way.
    """
    release = getattr(columns, "release", None)
    if release is not None:
        release(key)


class Encoder(nn.Module):
    """Base class of feature encoders.

    A subclass's ``__init__`` signature is its recipe schema: explicit typed parameters, with
    ``features: list[str]`` (the columns it encodes, from the recipe) and the injected keyword
    ``feature_info: dict[str, FeatureInfo]`` (fitted vocabularies and lengths; never written in
    a recipe). It sets :attr:`output_dim`.

    Class attributes:
        accepts: feature types this encoder can encode; the builder checks every listed feature
            against it and reports a recipe error otherwise.
        injected: constructor parameters the builder fills in.

    Data-side preparation: an encoder that needs columns the preprocessor does not produce (raw
    text, say) overrides :meth:`featurize`, which the data module calls once per split, off the
    training hot path; the tensors it returns join the batch under the keys it chooses. The data
    module may hand it columns it can free: calling :func:`release_column` on each input column
    once it is no longer read keeps setup memory at the data's size plus one column.

    Per-task encodings: an encoder may keep a separate copy of its parameters for some tasks
    (the ``embedding`` encoder's ``task_specific`` tables, for STEM). It then lists those tasks
    in :attr:`per_task`, returns their encodings from :meth:`forward_tasks` and leaves their
    parameters out of :meth:`shared_parameters`. The model concatenates, for each task, the
    encoders' task encodings (the shared one where an encoder has none for the task) into the
    task's input ``[B, D]`` and hands it to backbones that read per-task inputs
    (:attr:`~mtlframe.backbones.base.Backbone.accepts_task_inputs`). Encoders without per-task
    parameters (the default) are shared: their output is part of every task's input.
    """

    accepts: ClassVar[frozenset[str]] = frozenset()
    injected: ClassVar[tuple[str, ...]] = ("feature_info",)
    output_dim: int
    #: tasks with their own encoding (their own parameters); empty: the encoder is shared by all.
    per_task: tuple[str, ...] = ()

    def forward_tasks(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each task of :attr:`per_task` encoded with its own parameters: ``{task: [B, output_dim]}``.

        The default (a shared encoder) returns ``{}``.
        """
        return {}

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters used by more than one task: all of them unless the encoder has per-task ones."""
        return self.parameters()

    def feature_slices(self) -> dict[str, tuple[int, int]] | None:
        """``{feature: (start, stop)}``: the columns of :meth:`forward`'s output that encode each
        feature alone, or ``None`` when features share columns (a projection that mixes them).

        Two-tower retrieval (:mod:`mtlframe.retrieval`) splits the encoders' output into a user
        and an item side with it; an encoder of one feature, or whose features are all on one
        side, needs none. The default: ``None``.
        """
        return None

    def featurize(self, raw: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Turn raw columns (``name -> [N]`` numpy arrays, strings for text) into tensors.

        Returns ``{batch_key: [N, ...] tensor}``; the default needs nothing and returns ``{}``.
        """
        return {}

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:  # pragma: no cover
        """Encode a batch. Returns ``[B, output_dim]``."""
        raise NotImplementedError
