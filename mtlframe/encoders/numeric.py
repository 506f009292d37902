"""``numeric``: standardized numeric features -> ``[B, F]`` (or a linear projection to ``[B, d]``)."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from mtlframe.encoders.base import Encoder, release_column
from mtlframe.errors import ArgumentError
from mtlframe.features import FeatureInfo


class NumericEncoder(Encoder):
    """Passes standardized numeric features through, optionally projected.

    The preprocessor standardizes each column with the train split's mean and standard
    deviation. Missing values (empty, NaN, ``inf``) are an error unless the recipe declares a fill
    (``data.fill_missing``: ``mean``, ``median``, ``zero`` or a number); values beyond float32 are
    an error unless it declares a range (``data.clip``). So the inputs are always finite.

    Args:
        features: numeric columns.
        dim: if set, a ``Linear(F, dim)`` projection; else the ``F`` values themselves.
        feature_info: injected.

    Shape: batch -> ``[B, dim or F]``.
    """

    accepts = frozenset({"numeric"})

    def __init__(self, features: list[str], dim: int | None = None, *,
                 feature_info: Mapping[str, FeatureInfo]) -> None:
        super().__init__()
        if dim is not None and dim < 1:
            raise ArgumentError("dim", f"dim must be >= 1 or null, got {dim}")
        self.features = list(features)
        self.key = "num:" + ",".join(self.features)
        self.proj = nn.Linear(len(self.features), dim) if dim else None
        self.output_dim = dim or len(self.features)
        self.input_keys = [self.key]

    def feature_slices(self) -> dict[str, tuple[int, int]] | None:
        """One column per feature without ``dim``; ``None`` with it (the projection mixes them)."""
        if self.proj is not None:
            return None
        return {f: (j, j + 1) for j, f in enumerate(self.features)}

    def featurize(self, columns: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, torch.Tensor]:
        """Stack the columns into one ``[N, F]`` float32 tensor: feature-major (an ``[F, N]`` block
        seen as ``[N, F]``), filled and released (:func:`release_column`) one column at a time."""
        n = len(columns[self.features[0]])
        x = torch.empty((len(self.features), n), dtype=torch.float32)
        for j, f in enumerate(self.features):
            x[j].copy_(torch.as_tensor(columns[f]))
            release_column(columns, f)
        return {self.key: x.t()}

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        x = batch[self.key]                                        # (B, F)
        return self.proj(x) if self.proj is not None else x
