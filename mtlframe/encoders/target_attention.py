"""``target-attention``: DIN's local activation unit over a behaviour sequence.

Zhou et al., "Deep Interest Network for Click-Through Rate Prediction", KDD 2018, Sec. 4.3 and
Fig. 2: the user's interest in a candidate ad is ``v_U(A) = sum_j a(e_j, v_A) e_j``, where the
activation unit ``a`` is a feed-forward network over the behaviour embedding ``e_j``, the target
embedding ``v_A``, and their interaction. Matched against the authors' released code
(github.com/zhougr1993/DeepInterestNetwork, ``din/model.py``, function ``attention``, commit
9765f96): the unit's input is ``[q, k, q - k, q * k]`` per position, through Dense(80, sigmoid)
-> Dense(40, sigmoid) -> Dense(1) (our defaults ``hidden: [80, 40]``, ``activation: sigmoid``),
padding positions masked.

Normalization: the paper states that "normalization with softmax on the output of a(·) is
abandoned ... to reserve the intensity of user interests" (Sec. 4.3), so by default the weights
are the raw unit outputs (``normalize: none``) and the output is their weighted *sum*. The
released ``attention`` function instead scales the scores by ``1/sqrt(d)`` and applies a masked
softmax; ``normalize: softmax`` does exactly that.

The query is the target item (``target: item_id``), so the history must share ``item_id``'s
table (``share_with: item_id``): history and target are one embedding space. Because the
encoding depends on the scored item, it cannot serve a two-tower user tower (see
:mod:`mtlframe.retrieval`) nor ``mtlframe recommend``'s user/item pairing.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn

from mtlframe.encoders.embedding import _task_specific
from mtlframe.encoders.sequence_base import SequenceEncoder, masked_fill_empty, new_empty_vectors
from mtlframe.encoders.tables import SharedTables
from mtlframe.errors import ArgumentError
from mtlframe.features import FeatureInfo
from mtlframe.layers import MLP

NORMALIZE = ("none", "softmax")


class ActivationUnit(nn.Module):
    """DIN's activation unit: ``[q, k, q - k, q * k]`` -> MLP -> one score per position.

    The first layer is evaluated without building the ``[B, L, 4d]`` concatenation, by an exact
    rewrite: with ``W = [W_q, W_k, W_d, W_p]`` (each ``[h, d]``),
    ``W [q, k, q - k, q * k] = (W_q + W_d) q + (W_k - W_d + W_p diag(q)) k``, so the query part is
    computed once per row and each position costs one ``[d] x [d, h]`` product instead of
    ``[4d] x [4d, h]`` (:meth:`reference` is the literal formula, for tests).

    Shape: ``q [B, d]``, ``k [B, L, d]`` -> scores ``[B, L]``.
    """

    def __init__(self, dim: int, hidden: Sequence[int], activation_name: str) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = MLP(4 * dim, hidden, activation_name=activation_name, output_dim=1)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        first, rest = self.mlp.net[0], self.mlp.net[1:]
        w_q, w_k, w_d, w_p = first.weight.split(self.dim, dim=1)              # each (h, d)
        per_row = q @ (w_q + w_d).t() + first.bias                            # (B, h)
        per_key = (w_k - w_d).t().unsqueeze(0) + q.unsqueeze(2) * w_p.t().unsqueeze(0)  # (B, d, h)
        h = torch.bmm(k, per_key) + per_row.unsqueeze(1)                      # (B, L, h)
        return rest(h).squeeze(-1)                                            # (B, L)

    def reference(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """The same scores from the literal concatenation ``[q, k, q - k, q * k]`` (slower)."""
        q = q.unsqueeze(1).expand_as(k)                                       # (B, L, d)
        return self.mlp(torch.cat([q, k, q - k, q * k], dim=-1)).squeeze(-1)  # (B, L)


class TargetAttentionEncoder(SequenceEncoder):
    """Target attention (DIN) over each history, the target item as the query.

    Args:
        features: ``sequence`` features sharing the target's table (``share_with: <target>``); each
            gets its own activation unit.
        target: the scored item's categorical feature (``item_id``); it must be encoded by an
            ``embedding`` encoder of the same ``dim``.
        dim: embedding width ``d`` (the shared table's width).
        hidden: hidden widths of the activation unit (DIN: ``[80, 40]``).
        activation: the unit's hidden activation (DIN's released code: ``sigmoid``; the paper
            uses PReLU / Dice: ``prelu``).
        normalize: ``none`` (the paper: raw weights, weighted sum) or ``softmax`` (the released
            code: masked softmax of the scores divided by ``sqrt(d)``).
        per_task: ``true`` (every task) or a list of tasks that get their own activation units
            (task-specific interest); read only by backbones that take per-task inputs
            (``stem``). The shared units still give :meth:`forward`'s output.
        feature_info, task_names, tables: injected.

    Shapes: batch (``f`` int ``[B, L]``, target int ``[B]``) -> ``[B, F * d]``; per position ``j``
    the weight ``w_j = a([q, k_j, q - k_j, q * k_j])`` (0 at padding), the output ``sum_j w_j k_j``.
    :meth:`forward_tasks`: ``{task: [B, F * d]}`` for the ``per_task`` tasks.

    Empty history: the feature's learned "no history" vector (``[d]``, initialized at zero).

    Raises:
        ArgumentError: unknown ``normalize``; ``target`` not a categorical feature; bad ``per_task``
            task names; at binding: a history that does not share the target's table, a target that
            no ``embedding`` encoder holds, or widths that differ.

    Example::

        enc = TargetAttentionEncoder(["hist_items"], target="item_id", dim=16, feature_info=info)
        enc.bind_tables(SharedTables(encoders))
        enc({"hist_items": ids, "item_id": items})   # [B, 16]
    """

    injected = ("feature_info", "task_names", "tables")

    def __init__(self, features: list[str], target: str, dim: int = 16, hidden: list[int] = [80, 40],  # noqa: B006
                 activation: str = "sigmoid", normalize: str = "none", per_task: bool | list[str] = False, *,
                 feature_info: Mapping[str, FeatureInfo], task_names: Sequence[str] = (),
                 tables: SharedTables | None = None) -> None:
        if normalize not in NORMALIZE:
            raise ArgumentError("normalize", f"normalize must be one of {', '.join(NORMALIZE)}, got {normalize!r}")
        super().__init__(features, dim, target, feature_info=feature_info, tables=tables)
        self.normalize = normalize
        self.per_task = _task_specific(per_task, task_names, key="per_task")

        def units() -> nn.ModuleDict:
            return nn.ModuleDict({f: ActivationUnit(self.dim, list(hidden), activation) for f in self.features})

        self.units = units()
        self.task_units = nn.ModuleDict({t: units() for t in self.per_task})
        self.empty = new_empty_vectors(self.features, self.dim)
        self.output_dim = self.dim * len(self.features)

    def weights(self, unit: ActivationUnit, q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attention weights ``[B, L]`` of ``k [B, L, d]`` for query ``q [B, d]``; 0 at padding."""
        scores = unit(q, k)                                                   # (B, L)
        if self.normalize == "softmax":
            scores = (scores / self.dim ** 0.5).masked_fill(~mask, float("-inf"))
            # an all-padding row would be NaN: give it zeros (the empty vector replaces it anyway)
            return torch.softmax(scores, dim=1).nan_to_num(0.0)
        return scores.masked_fill(~mask, 0.0)

    def _encode(self, units: nn.ModuleDict, batch: Mapping[str, torch.Tensor], q: torch.Tensor,
                hist: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        parts = []
        for f in self.features:
            k, mask = hist[f]
            w = self.weights(units[f], q, k, mask)                             # (B, L)
            out = torch.bmm(w.unsqueeze(1), k).squeeze(1)                      # (B, d)
            parts.append(masked_fill_empty(out, mask, self.empty[f]))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        q = self.target_embedding(batch)                                      # (B, d)
        return self._encode(self.units, batch, q, {f: self.history(f, batch) for f in self.features})

    def forward_tasks(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{task: [B, F * d]}``: each ``per_task`` task's own activation units over the same
        (shared) embeddings."""
        if not self.per_task:
            return {}
        q = self.target_embedding(batch)
        hist = {f: self.history(f, batch) for f in self.features}
        return {t: self._encode(units, batch, q, hist) for t, units in self.task_units.items()}

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """Everything but the per-task activation units (each trained by one task)."""
        if not self.per_task:
            return self.parameters()
        own = {id(p) for p in self.task_units.parameters()}
        return (p for p in self.parameters() if id(p) not in own)
