"""The item catalogue: one model-ready row per item, for scoring items a user never interacted with."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mtlframe.batching import Columns, take

#: batch keys that are not model inputs (labels, masks, group and id columns)
NOT_INPUTS = ("label/", "mask/", "group/", "id/")


@dataclass
class Catalogue:
    """Every item of the training split, each with the model-ready columns of one of its rows.

    Items are identified by their encoded code of the item id feature (the preprocessor's
    categorical code; 0, the out-of-vocabulary code, is never in the catalogue). An item's
    features come from its first training row; the item-side encodings of that row are what a
    two-tower item tower or :meth:`~mtlframe.model.MultiTaskModel.compose` reads (its user-side
    columns are ignored there).

    Attributes:
        user_feature, item_feature: the user and item id features (the first of
            ``ranking.user_features`` / ``ranking.item_features``).
        items: ``[I]`` int64 item codes, sorted; position ``j`` of a score matrix ``[U, I]`` is
            item ``items[j]``.
        columns: model-ready columns, row ``j`` = a training row of ``items[j]``.
        counts: ``[C]`` int64 training rows per item code (``C`` = the item feature's cardinality):
            the popularity used by popularity sampling, logQ and the popularity metric.
    """

    user_feature: str
    item_feature: str
    items: torch.Tensor
    columns: Columns
    counts: torch.Tensor
    _position: torch.Tensor | None = field(default=None, repr=False)
    _on: tuple | None = field(default=None, repr=False)   # (device, positions, columns) of rows_on

    @classmethod
    def from_training(cls, user_feature: str, item_feature: str, item_codes: torch.Tensor, columns: Columns,
                      cardinality: int) -> "Catalogue":
        """Build it from the training split's item codes ``[N]`` and model-ready ``columns`` (``[N, ...]``)."""
        codes = torch.as_tensor(item_codes).long().reshape(-1)
        n = len(codes)
        counts = torch.bincount(codes, minlength=cardinality)[:max(cardinality, 1)]
        first = torch.full((max(cardinality, 1),), n, dtype=torch.long)
        first.scatter_reduce_(0, codes, torch.arange(n), reduce="amin")
        items = torch.nonzero(first < n).squeeze(1)
        items = items[items != 0]                                  # the OOV code is no item
        inputs = {k: v for k, v in columns.items() if not k.startswith(NOT_INPUTS)}
        return cls(user_feature, item_feature, items, take(inputs, first[items]), counts)

    def __len__(self) -> int:
        return len(self.items)

    def positions(self, codes: torch.Tensor) -> torch.Tensor:
        """Catalogue position of each item code ``[M]`` (``-1`` for a code not in the catalogue)."""
        if self._position is None:
            pos = torch.full((len(self.counts),), -1, dtype=torch.long)
            pos[self.items] = torch.arange(len(self.items))
            self._position = pos
        codes = torch.as_tensor(codes).long()
        inside = (codes >= 0) & (codes < len(self._position))
        out = torch.full_like(codes, -1)
        out[inside] = self._position[codes[inside]]
        return out

    def rows(self, codes: torch.Tensor, device: torch.device | None = None) -> dict[str, torch.Tensor]:
        """Model-ready columns ``[M, ...]`` of the given item codes (each must be in the catalogue).

        Raises:
            KeyError: a code that is not in the catalogue.
        """
        pos = self.positions(torch.as_tensor(codes).cpu())
        if bool((pos < 0).any()):
            raise KeyError(f"item codes not in the catalogue: {torch.as_tensor(codes)[pos < 0][:5].tolist()}")
        return self.take(pos, device)

    def rows_on(self, codes: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        """:meth:`rows` for a training step: the catalogue's columns and code -> position table are
        copied to ``device`` once and gathered there (no host round trip per call). ``codes`` must
        be catalogue items (a model-side sampler draws only those); no check is made."""
        device = torch.device(device)
        if self._on is None or self._on[0] != device:
            self.positions(torch.zeros(0, dtype=torch.long))          # builds the position table
            self._on = (device, self._position.to(device), {k: v.to(device) for k, v in self.columns.items()})
        _, position, columns = self._on
        pos = position[codes.to(device, non_blocking=True).long()]   # host codes: no stream sync
        return {k: v.index_select(0, pos) for k, v in columns.items()}

    def take(self, positions: torch.Tensor, device: torch.device | None = None) -> dict[str, torch.Tensor]:
        """Model-ready columns of catalogue positions ``[M]`` (on ``device`` when given)."""
        out = take(self.columns, torch.as_tensor(positions).long().cpu())
        if device is not None:
            out = {k: v.to(device) for k, v in out.items()}
        return out

