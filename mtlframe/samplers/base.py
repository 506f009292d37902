"""The sampler contract: data-side transformation of the training split, once per epoch."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch

from mtlframe.features import FeatureInfo, TaskSpec


class Sampler:
    """Base class of training samplers (negative sampling and the like).

    Constructor: typed hyper-parameters plus the injected ``feature_info: dict[str, FeatureInfo]``
    and ``tasks: list[TaskSpec]``. :meth:`sample` runs on the columnar training tensors at the
    start of every epoch (vectorized torch ops, never per-row Python) and returns the columns to
    batch from; validation and test data are never sampled.
    """

    injected: ClassVar[tuple[str, ...]] = ("feature_info", "tasks")

    def __init__(self, feature_info: Mapping[str, FeatureInfo], tasks: Sequence[TaskSpec]) -> None:
        self.feature_info = dict(feature_info)
        self.tasks = list(tasks)

    def sample(self, columns: Mapping[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Return the training columns for one epoch (``name -> [N', ...]``)."""
        return dict(columns)
