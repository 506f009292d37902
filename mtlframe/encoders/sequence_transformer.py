"""``sequence-transformer``: BST, self-attention over the behaviour sequence and the target item.

Chen et al., "Behavior Sequence Transformer for E-commerce Recommendation in Alibaba", DLP-KDD
2019: the user's behaviour sequence *with the target item appended* goes through Transformer
layers (multi-head self-attention, then a point-wise feed-forward network with LeakyReLU, each
with dropout, a residual connection and layer normalization; one block worked best in the
paper's experiments), so every behaviour is re-encoded in the context of the others and of the
candidate. Order enters through a "positional" feature, which BST defines as a time gap,
``pos(v_i) = t(v_t) - t(v_i)`` (recommending time minus the behaviour's time), embedded with
each item; here the position embedding is added to the item embedding, as in the Transformer
(Vaswani et al., 2017).

Our tokens: ``L`` history ids (own or shared table) plus the target item (``target: item_id``,
same table), each plus a position embedding:

* ``position: index`` (default): the rank from the end (most recent behaviour 1, target 0);
* ``position: time``: a time gap from ``time_field``, a side field of the sequence that is
  monotone along the history: event times (a timestamp column) or the history's ``time_gap``
  (the row's time minus the event's, BST's ``pos``). Side fields are standardized with unknown
  mean, so the encoder uses ``gap_j = |x_last - x_j|``, the time from behaviour ``j`` to the most
  recent one, in the field's standard deviations (the same for both kinds of field), bucketed on
  a log2 scale: bucket ``min(floor(log2(1 + gap / time_unit)), time_buckets - 1) + 1``; the
  target is bucket 0;
* ``position: none``.

Padding positions are masked as attention keys and never read. Output: the target token's
final state (``output: target``, what the candidate "sees" of the history) or the mean over the
real tokens and the target (``output: mean``). Depends on the scored item: not for a two-tower
user tower nor ``mtlframe recommend``'s pairing (see :mod:`mtlframe.retrieval`).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from mtlframe.encoders.sequence_base import SequenceEncoder
from mtlframe.encoders.tables import SharedTables
from mtlframe.errors import ArgumentError
from mtlframe.features import FeatureInfo
from mtlframe.layers import activation as make_activation

POSITIONS = ("index", "time", "none")
OUTPUTS = ("target", "mean")


class SequenceTransformerEncoder(SequenceEncoder):
    """BST: Transformer layers over ``[history..., target]``; one output vector per feature.

    Args:
        features: ``sequence`` features sharing the target's table (``share_with: <target>``); each
            gets its own Transformer.
        target: the scored item's categorical feature (``item_id``), encoded by an ``embedding``
            encoder of the same ``dim``.
        dim: token width ``d`` (the shared table's width); must be divisible by ``heads``.
        heads: attention heads.
        layers: Transformer blocks (BST: 1).
        ffn_dim: hidden width of the feed-forward network (default ``4 * dim``).
        dropout: dropout in attention and feed-forward.
        activation: feed-forward activation (BST: ``leaky_relu``).
        position: ``index``, ``time`` or ``none`` (see the module docstring).
        time_field: the side field holding event times (``position: time``).
        time_unit: the smallest gap told apart, in ``time_field``'s standardized units.
        time_buckets: log2 time-gap buckets (the target has its own extra bucket).
        output: ``target`` (the target token's state) or ``mean`` (over real tokens + target).
        feature_info, tables: injected.

    Shape: batch (``f`` int ``[B, L]``, ``f:<time_field>`` float ``[B, L]`` with ``position: time``,
    target int ``[B]``) -> ``[B, F * d]``.

    Empty history: the target token attends to itself alone (no extra vector needed).

    Raises:
        ArgumentError: ``dim`` not divisible by ``heads``; unknown ``position`` / ``output``;
            ``position: time`` without a ``time_field`` that every feature has; values < 1; at
            binding, as ``target-attention``.

    Example::

        enc = SequenceTransformerEncoder(["hist_items"], target="item_id", dim=16, feature_info=info)
        enc.bind_tables(SharedTables(encoders))
        enc({"hist_items": ids, "item_id": items})   # [B, 16]
    """

    def __init__(self, features: list[str], target: str, dim: int = 16, heads: int = 2, layers: int = 1,
                 ffn_dim: int | None = None, dropout: float = 0.1, activation: str = "leaky_relu",
                 position: str = "index", time_field: str | None = None, time_unit: float = 0.001,
                 time_buckets: int = 16, output: str = "target", *,
                 feature_info: Mapping[str, FeatureInfo], tables: SharedTables | None = None) -> None:
        for key, value, allowed in (("position", position, POSITIONS), ("output", output, OUTPUTS)):
            if value not in allowed:
                raise ArgumentError(key, f"{key} must be one of {', '.join(allowed)}, got {value!r}")
        for key, value in (("heads", heads), ("layers", layers), ("time_buckets", time_buckets)):
            if value < 1:
                raise ArgumentError(key, f"{key} must be >= 1, got {value}")
        if dim % heads:
            raise ArgumentError("heads", f"dim {dim} is not divisible by heads {heads}")
        if not 0.0 <= dropout < 1.0:
            raise ArgumentError("dropout", f"dropout must be in [0, 1), got {dropout}")
        if not time_unit > 0:
            raise ArgumentError("time_unit", f"time_unit must be > 0, got {time_unit}")
        super().__init__(features, dim, target, feature_info=feature_info, tables=tables)
        if position == "time":
            missing = [f for f in self.features if time_field is None or time_field not in self.fields[f]]
            if missing:
                raise ArgumentError("time_field", (
                    f"position: time needs time_field, a side field of every feature; "
                    f"{', '.join(map(repr, missing))} has fields {list(self.fields[missing[0]]) or 'none'} "
                    f"(add it to data.sequences.{missing[0]}.fields, or use position: index)"))
            self.input_keys += [f"{f}:{time_field}" for f in self.features]
        self.position, self.time_field, self.output = position, time_field, output
        self.time_unit, self.time_buckets = float(time_unit), int(time_buckets)
        self.max_len = {f: max(int(feature_info[f].max_len), 1) for f in self.features}
        rows = {f: (self.max_len[f] + 1 if position == "index" else self.time_buckets + 1) for f in self.features}
        self.pos = nn.ModuleDict({f: nn.Embedding(rows[f], self.dim) for f in self.features}
                                 if position != "none" else {})
        for emb in self.pos.values():
            nn.init.normal_(emb.weight, std=0.01)
        act = make_activation(activation)
        self.blocks = nn.ModuleDict({
            f: nn.TransformerEncoder(
                nn.TransformerEncoderLayer(self.dim, heads, ffn_dim or 4 * self.dim, dropout, act, batch_first=True),
                layers, enable_nested_tensor=False)
            for f in self.features})
        self.output_dim = self.dim * len(self.features)

    def positions(self, feature: str, batch: Mapping[str, torch.Tensor], length: int) -> torch.Tensor:
        """Position ids ``[B, L + 1]`` (``[1, L + 1]`` for ``index``) of the history tokens and the target."""
        if self.position == "index":
            return torch.arange(length, -1, -1, device=batch[feature].device).unsqueeze(0)
        t = batch[f"{feature}:{self.time_field}"].float()                    # (B, L)
        gap = (t[:, -1:] - t).abs() / self.time_unit                          # (B, L)
        bucket = torch.log2(1 + gap).floor().clamp(max=self.time_buckets - 1).long() + 1
        return torch.cat([bucket, torch.zeros_like(bucket[:, :1])], dim=1)   # (B, L + 1)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        q = self.target_embedding(batch)                                      # (B, d)
        parts = []
        for f in self.features:
            k, mask = self.history(f, batch)                                  # (B, L, d), (B, L)
            tokens = torch.cat([k, q.unsqueeze(1)], dim=1)                    # (B, L + 1, d)
            if self.position != "none":
                tokens = tokens + self.pos[f](self.positions(f, batch, k.shape[1]))
            real = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)     # (B, L + 1)
            h = self.blocks[f](tokens, src_key_padding_mask=~real)            # (B, L + 1, d)
            if self.output == "target":
                parts.append(h[:, -1])
            else:
                w = real.unsqueeze(-1).to(h.dtype)
                parts.append((h * w).sum(1) / w.sum(1))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
