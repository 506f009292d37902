"""``embedding``: categorical (and multi-categorical) features -> learned embeddings.

All single-valued categorical features share one fused table (one lookup per batch);
multi-categorical features (``"Action|Comedy"``) are mean-pooled with ``EmbeddingBag``.
"""
from __future__ import annotations

from collections.abc import Mapping

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
        feature_info: injected (vocabulary sizes).

    Shape: batch -> ``[B, F * d]`` with ``F = len(features)``.

    Id 0 of a categorical feature is its out-of-vocabulary / missing row (learned). For a
    multi-categorical feature id 0 is padding (ignored) and id 1 out-of-vocabulary.

    Example::

        enc = EmbeddingEncoder(["user_id", "item_id"], dim=16, feature_info=info)
        out = enc(batch)  # [B, 32]
    """

    accepts = frozenset({"categorical", "multi_categorical"})

    def __init__(self, features: list[str], dim: int = 16, sparse: bool = False, *,
                 feature_info: Mapping[str, FeatureInfo]) -> None:
        super().__init__()
        if dim < 1:
            raise ArgumentError("dim", f"dim must be >= 1, got {dim}")
        self.features = list(features)
        self.single = [f for f in self.features if feature_info[f].type == "categorical"]
        self.multi = [f for f in self.features if feature_info[f].type == "multi_categorical"]
        self.key = "cat:" + ",".join(self.single)
        self.fused = (FusedEmbedding([feature_info[f].cardinality for f in self.single], dim, sparse=sparse)
                      if self.single else None)
        self.bags = nn.ModuleDict({
            f: nn.EmbeddingBag(feature_info[f].cardinality, dim, mode="mean", padding_idx=0, sparse=sparse)
            for f in self.multi})
        for bag in self.bags.values():
            nn.init.normal_(bag.weight, std=0.01)
        self.output_dim = dim * len(self.features)
        self.input_keys = ([self.key] if self.single else []) + self.multi

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

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        if self.fused is not None:
            emb = self.fused(batch[self.key])                      # (B, F, d)
            parts.append(emb.flatten(1))                           # (B, F*d)
        for f, bag in self.bags.items():
            parts.append(bag(batch[f]))                            # (B, d)
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
