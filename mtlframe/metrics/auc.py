"""Exact ROC AUC that is undefined (NaN) when the labels hold a single class."""
from __future__ import annotations

import torch
from torchmetrics.classification import BinaryAUROC
from torchmetrics.utilities.data import dim_zero_cat


class AUC(BinaryAUROC):
    """torchmetrics' exact binary AUROC, but NaN where AUC is undefined.

    * Only one class seen: a split where a task's labels are all 0 (or all 1) has no ranking to
      measure; torchmetrics reports 0.0 there, which would read as a perfectly wrong model.
    * A NaN or infinite score: the rows cannot be ranked (a diverged model); torchmetrics would
      sort them somewhere and report a plausible-looking number.
    * No rows.

    ``update(preds [B] probabilities, target [B] 0/1)``; ``compute()`` returns a 0-dim tensor in
    [0, 1], or NaN in the cases above. The module that owns the metric warns why (task and split).
    """

    def compute(self) -> torch.Tensor:
        target = dim_zero_cat(self.target) if isinstance(self.target, list) else self.target
        if target.numel() == 0 or bool((target == target.flatten()[0]).all()):
            return torch.tensor(float("nan"))
        preds = dim_zero_cat(self.preds) if isinstance(self.preds, list) else self.preds
        if not bool(torch.isfinite(preds).all()):
            return torch.tensor(float("nan"))
        return super().compute()
