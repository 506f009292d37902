"""``sequence-pool``: a behaviour sequence pooled into one vector (masked mean, sum or max).

The user representation of YouTube's candidate generator (Covington et al., "Deep Neural Networks
for YouTube Recommendations", RecSys 2016, Sec. 3.2): the watch history, a variable-length
sequence of sparse video ids, is mapped to dense vectors by learned embeddings and averaged,
which performed best of the strategies the authors tried (sum, component-wise max, ...). It
reads the history alone (no target item), so a pooled user-side history can feed the user tower
of a two-tower model.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from mtlframe.encoders.sequence_base import SequenceEncoder, masked_fill_empty, new_empty_vectors
from mtlframe.encoders.tables import SharedTables
from mtlframe.errors import ArgumentError
from mtlframe.features import FeatureInfo

MODES = ("mean", "sum", "max")


class SequencePoolEncoder(SequenceEncoder):
    """Pools each history's id embeddings over its real positions (padding never counts).

    Args:
        features: ``sequence`` features; each is pooled on its own.
        dim: embedding width ``d`` (the shared table's width with ``share_with``).
        mode: ``mean`` (YouTube-DNN), ``sum`` or ``max`` (elementwise, over real positions).
        feature_info: injected.
        tables: injected (shared tables, for features with ``share_with``).

    Shape: batch (``f`` int ``[B, L]``, 0 = padding) -> ``[B, F * d]``, features in order.

    Empty history (a row of padding only): the feature's learned "no history" vector (``[d]``,
    initialized at zero), the same for every such row.

    Raises:
        ArgumentError: unknown ``mode``, ``dim < 1``; at binding, a ``share_with`` table that no
            ``embedding`` encoder holds or of another width than ``dim``.

    Example::

        enc = SequencePoolEncoder(["hist_items"], dim=16, feature_info=info, tables=tables)
        enc({"hist_items": ids})   # ids [B, 50] -> [B, 16]
    """

    def __init__(self, features: list[str], dim: int = 16, mode: str = "mean", *,
                 feature_info: Mapping[str, FeatureInfo], tables: SharedTables | None = None) -> None:
        if mode not in MODES:
            raise ArgumentError("mode", f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        super().__init__(features, dim, feature_info=feature_info, tables=tables)
        self.mode = mode
        self.empty = new_empty_vectors(self.features, self.dim)
        self.output_dim = self.dim * len(self.features)

    def pool(self, emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``emb [B, L, d]``, ``mask [B, L]`` -> ``[B, d]`` (empty rows: 0, before the empty vector)."""
        m = mask.unsqueeze(-1)                                                # (B, L, 1)
        if self.mode == "max":
            filled = emb.masked_fill(~m, float("-inf")).amax(dim=1)           # (B, d)
            return torch.where(mask.any(1, keepdim=True), filled, torch.zeros_like(filled))
        total = (emb * m.to(emb.dtype)).sum(dim=1)                            # (B, d)
        if self.mode == "sum":
            return total
        return total / mask.sum(dim=1, keepdim=True).clamp_min(1).to(emb.dtype)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        for f in self.features:
            emb, mask = self.history(f, batch)                                # (B, L, d), (B, L)
            parts.append(masked_fill_empty(self.pool(emb, mask), mask, self.empty[f]))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
