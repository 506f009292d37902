"""``log-numeric``: signed-log compression of heavy-tailed numeric features, then a projection.

Counts and amounts in recommendation and tabular data (spend, capital gains, clicks, follower
counts) are heavy-tailed: most rows sit near zero and a few are orders of magnitude larger.
mtlframe's preprocessor standardizes every numeric column, ``z = (x - mean) / std``, which keeps
the tail: in UCI Adult, ``capital_gain`` has ``z = -0.15`` on the 92 % of rows without gains and
up to ``z = 13.3`` on the largest. Fed to a linear layer, those few rows dominate the
activations and the gradient. The signed logarithm (the "symlog" of plotting libraries; for
counts, the ``log1p`` transform of Kaggle tabular practice)

.. math:: u = \\operatorname{sign}(z) \\, \\log(1 + |z|)

is the identity near 0 (slope 1), monotone, odd, defined for negative values, and compresses
the tail (``13.3 -> 2.66``). It is computed once per split on the data side
(:meth:`LogNumericEncoder.featurize`); training only runs the projection.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from mtlframe.encoders.base import Encoder
from mtlframe.errors import ArgumentError
from mtlframe.features import FeatureInfo


def signed_log1p(z: torch.Tensor) -> torch.Tensor:
    """``sign(z) * log1p(|z|)``, elementwise; same shape and dtype as ``z``."""
    return torch.sign(z) * torch.log1p(z.abs())


class LogNumericEncoder(Encoder):
    """Signed ``log1p`` of standardized numeric features, optionally projected.

    Args:
        features: numeric columns (the preprocessor standardizes them; missing values are an
            error unless the recipe declares ``data.fill_missing``, so the values are finite).
        dim: width of a ``Linear(F', dim)`` projection; ``None`` outputs the transformed values
            themselves.
        keep_linear: also output the untransformed standardized values, ``[u, z]`` (``F' = 2F``),
            so the model can use both the compressed and the linear scale.
        feature_info: injected by mtlframe (never written in a recipe).

    Shape: batch -> ``[B, dim]``, or ``[B, F']`` without ``dim``; ``F' = F`` or ``2F``
    with ``keep_linear``.

    Raises:
        ArgumentError: (a ``ValueError``) no features, a repeated feature, a non-numeric feature,
            or ``dim < 1``; ``recipe validate`` finds these without data (see the README).

    Example::

        enc = LogNumericEncoder(["capital_gain", "capital_loss"], dim=8, feature_info=info)
        cols = enc.featurize({"capital_gain": z1, "capital_loss": z2})   # {key: [N, 2]}
        out = enc(cols)                                                   # [N, 8]

    Worked value: ``z = [0, 1, -3, e - 1]`` becomes ``u = [0, log 2, -log 4, 1]``
    ``= [0, 0.693, -1.386, 1]``.
    """

    accepts = frozenset({"numeric"})

    def __init__(self, features: list[str], dim: int | None = None, keep_linear: bool = False, *,
                 feature_info: Mapping[str, FeatureInfo]) -> None:
        super().__init__()
        # ArgumentError (a ValueError) names the parameter: mtlframe reports the problem at its recipe
        # key, `model.encoders[1].dim`, both at `mtlframe recipe validate` and at `train`.
        if not features:
            raise ArgumentError("features", "log-numeric needs at least one feature")
        if len(set(features)) != len(features):
            raise ArgumentError("features", f"log-numeric features must be distinct, got {list(features)}")
        wrong = [f for f in features if feature_info[f].type != "numeric"]
        if wrong:
            raise ArgumentError("features", f"log-numeric encodes numeric features; {', '.join(wrong)} "
                                            "are not numeric")
        if dim is not None and dim < 1:
            raise ArgumentError("dim", f"dim must be >= 1 or null, got {dim}")
        self.features = list(features)
        self.keep_linear = keep_linear
        # one batch key per setting, so two log-numeric encoders (or a numeric one) never collide
        self.key = "log-numeric:" + ",".join(self.features) + ("+linear" if keep_linear else "")
        width = len(self.features) * (2 if keep_linear else 1)
        self.proj = nn.Linear(width, dim) if dim else None
        self.output_dim = dim or width
        self.input_keys = [self.key]

    def featurize(self, columns: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, torch.Tensor]:
        """Transform the standardized columns once per split. Returns ``{key: [N, F'] float32}``."""
        z = torch.stack([torch.as_tensor(columns[f]).float() for f in self.features], dim=1)  # (N, F)
        u = signed_log1p(z)                                                                  # (N, F)
        return {self.key: torch.cat([u, z], dim=1) if self.keep_linear else u}              # (N, F')

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        u = batch[self.key]                                        # (B, F')
        return self.proj(u) if self.proj is not None else u        # (B, dim or F')
