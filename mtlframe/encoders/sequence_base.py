"""What the sequence encoders share: history id lookup (own or shared table), masks, the target item.

Batch keys of a ``sequence`` feature ``f`` (made by the preprocessor, copied as they are):

* ``f``: int ``[B, L]``, pre-padded (padding at the front, the most recent item in the last
  column); code 0 = padding, ``c + 1`` = code ``c`` of the id space (so 1 = out of vocabulary);
* ``f:g``: float32 ``[B, L]`` for each side field ``g`` (0 at padding).

The id space is the feature's own vocabulary (the encoder then owns an ``nn.Embedding`` of
``cardinality + 1`` rows, row 0 the padding row) or, with ``share_with: item_id`` in the data
section, the codes of ``item_id``: the rows ``seq_code - 1`` of the table of the ``embedding``
encoder that encodes ``item_id``, read through :class:`~mtlframe.encoders.tables.SharedTables`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from mtlframe.encoders.base import Encoder
from mtlframe.encoders.tables import SharedTables
from mtlframe.errors import ArgumentError, MTLFrameError
from mtlframe.features import FeatureInfo


class SequenceEncoder(Encoder):
    """Base of ``sequence-pool``, ``target-attention`` and ``sequence-transformer``.

    Args:
        features: ``sequence`` features, each encoded on its own (outputs concatenated in order).
        dim: embedding width ``d`` of the history ids; equal to the shared table's width under
            ``share_with``.
        target: a categorical feature of the scored item (``item_id``) the encoder compares the
            history with, or ``None``. Its table is looked up through ``tables``, and every
            feature must share it (``share_with: <target>``), so history and target are one space.
        feature_info: injected.
        tables: injected after every encoder is built (:meth:`bind_tables`); may be passed by hand.

    Raises:
        ArgumentError: ``dim < 1``; no features; ``target`` is not a categorical feature.
    """

    accepts = frozenset({"sequence"})
    injected: tuple[str, ...] = ("feature_info", "tables")

    def __init__(self, features: list[str], dim: int, target: str | None = None, *,
                 feature_info: Mapping[str, FeatureInfo], tables: SharedTables | None = None) -> None:
        super().__init__()
        if dim < 1:
            raise ArgumentError("dim", f"dim must be >= 1, got {dim}")
        if not features:
            raise ArgumentError("features", "list at least one sequence feature")
        self.features = list(features)
        self.dim = int(dim)
        self.share = {f: feature_info[f].share_with for f in self.features if feature_info[f].share_with}
        self.fields = {f: tuple(feature_info[f].fields) for f in self.features}
        own = [f for f in self.features if f not in self.share]
        self.tables_own = nn.ModuleDict({
            f: nn.Embedding(feature_info[f].cardinality + 1, self.dim, padding_idx=0) for f in own})
        for table in self.tables_own.values():
            nn.init.normal_(table.weight, std=0.01)
            with torch.no_grad():
                table.weight[0].zero_()
        if target is not None:
            if target not in feature_info:
                raise ArgumentError("target", f"target '{target}' is not a feature of the model: list it in an "
                                              "`embedding` encoder's features (the history is compared with its table)")
            if feature_info[target].type != "categorical":
                raise ArgumentError("target", f"target '{target}' is a {feature_info[target].type} feature; "
                                              "it must be the categorical id of the scored item (e.g. item_id)")
        self.target = target
        # a plain attribute (SharedTables is no nn.Module): the owning encoder is not registered twice
        self.tables: SharedTables | None = None
        self.input_keys = [*self.features, *([target] if target else [])]
        if tables is not None:
            self.bind_tables(tables)

    # -- tables -----------------------------------------------------------------------------------
    def bind_tables(self, tables: SharedTables) -> None:
        """Read shared tables through ``tables`` (``lookup(feature, codes)``).

        Raises:
            ArgumentError: a feature's ``share_with`` table (or the ``target``'s) is served by no
                ``embedding`` encoder, has another width than ``dim``, or (with ``target``) a
                feature does not share the target's table.
        """
        needed = {s: f"'{f}' has share_with: {s}" for f, s in self.share.items()}
        if self.target is not None:
            needed.setdefault(self.target, f"target: {self.target}")
            apart = [f for f in self.features if self.share.get(f) != self.target]
            if apart:
                raise ArgumentError("target", (
                    f"the history {', '.join(map(repr, apart))} is not in the id space of the target "
                    f"'{self.target}' (its ids are its own vocabulary), so it cannot be compared with the "
                    f"target item: give it share_with: {self.target} in the data section "
                    f"(data.sequences.{apart[0]}.share_with)"))
        for feat, why in needed.items():
            if feat not in tables:
                raise ArgumentError("features" if "share_with" in why else "target", (
                    f"{why}, but no `embedding` encoder of the model encodes '{feat}' as a categorical "
                    f"feature (tables: {', '.join(tables.features()) or 'none'}): add '{feat}' to an "
                    "embedding encoder's features"))
            if tables.dim(feat) != self.dim:
                raise ArgumentError("dim", (
                    f"dim is {self.dim} but the table of '{feat}' ({why}) is {tables.dim(feat)} wide: "
                    f"set dim: {tables.dim(feat)} (a shared table has one width)"))
        self.tables = tables

    def _tables(self) -> SharedTables:
        if self.tables is None:
            raise MTLFrameError(
                f"{type(self).__name__} reads the table of "
                f"{', '.join(sorted({*self.share.values(), *([self.target] if self.target else [])}))} "
                "but no tables were bound: build the model with mtlframe's Builder (it binds them) or "
                "pass tables=SharedTables(encoders) / call bind_tables")
        return self.tables

    # -- lookups ----------------------------------------------------------------------------------
    def history(self, feature: str, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(embeddings [B, L, d], mask [B, L] bool)`` of ``feature``'s history; mask True at real
        ids (codes > 0). Padding rows of a shared table are the shared feature's code 0 (its
        out-of-vocabulary row), so callers must apply the mask; an own table's padding row is zero."""
        codes = batch[feature]
        mask = codes > 0
        if feature in self.share:
            emb = self._tables().lookup(self.share[feature], (codes.long() - 1).clamp_min(0))
        else:
            emb = self.tables_own[feature](codes.long())
        return emb, mask

    def target_embedding(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``[B, d]`` embedding of the scored item (the ``target`` feature's code)."""
        return self._tables().lookup(self.target, batch[self.target])

    def target_features(self) -> tuple[str, ...]:
        """``(target,)`` when the encoding reads the scored item, else ``()``."""
        return (self.target,) if self.target else ()

    def feature_slices(self) -> dict[str, tuple[int, int]]:
        """Each feature's ``output_dim / F`` columns, in ``features`` order."""
        w = self.output_dim // len(self.features)
        return {f: (j * w, (j + 1) * w) for j, f in enumerate(self.features)}


def masked_fill_empty(out: torch.Tensor, mask: torch.Tensor, empty: torch.Tensor) -> torch.Tensor:
    """``out [B, d]`` with the rows whose ``mask [B, L]`` is all False replaced by ``empty [d]``
    (the learned "no history" vector; ``torch.where``, so ``empty`` is in the graph of every batch
    and gets a gradient, zero when no row is empty, as DDP needs)."""
    none = ~mask.any(dim=1, keepdim=True)                                   # (B, 1)
    return torch.where(none, empty.to(out.dtype).expand_as(out), out)


def new_empty_vectors(features: Sequence[str], width: int) -> nn.ParameterDict:
    """One learned "no history" vector ``[width]`` per feature, initialized at zero."""
    return nn.ParameterDict({f: nn.Parameter(torch.zeros(width)) for f in features})
