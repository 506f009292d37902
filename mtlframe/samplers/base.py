"""The sampler contract: data-side changes to the training split, once per epoch."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from mtlframe.features import FeatureInfo, TaskSpec


@dataclass
class EpochSample:
    """What a sampler returns for one epoch.

    Attributes:
        keep: indices ``[N']`` of the training rows to use this epoch, or ``None`` for all of them.
        extra: new rows as *preprocessed* columns (the same keys as the input to
            :meth:`Sampler.sample`: one ``[M, ...]`` tensor or numpy array per feature, plus
            ``label/<task>`` and ``mask/<task>`` for every task), or ``None``. The data module
            featurizes them with the model's encoders and appends them to the kept rows.
    """

    keep: torch.Tensor | None = None
    extra: dict[str, Any] | None = None


class Sampler:
    """Base class of training samplers (negative sampling, down-sampling, ...).

    Constructor: typed hyper-parameters plus the injected ``feature_info: dict[str, FeatureInfo]``
    and ``tasks: list[TaskSpec]``. :meth:`sample` runs at the start of every training epoch on the
    preprocessed training columns, with vectorized tensor ops (never per-row Python); validation
    and test data are never sampled. ``resamples = False`` (the default of the ``none`` sampler)
    tells the data module that nothing changes, so it batches the training rows directly.
    """

    injected: ClassVar[tuple[str, ...]] = ("feature_info", "tasks")
    resamples: ClassVar[bool] = True

    def __init__(self, feature_info: Mapping[str, FeatureInfo], tasks: Sequence[TaskSpec]) -> None:
        self.feature_info = dict(feature_info)
        self.tasks = list(tasks)

    def prepare(self, splits: Mapping[str, Mapping[str, Any]]) -> None:
        """Called once before training with every split's preprocessed columns (``train``,
        ``val``, ``test``), e.g. to remember evaluation positives. Default: nothing."""

    def sample(self, columns: Mapping[str, Any], generator: torch.Generator) -> EpochSample:
        """Return this epoch's changes to the training rows (``columns``: name -> ``[N, ...]``)."""
        return EpochSample()
