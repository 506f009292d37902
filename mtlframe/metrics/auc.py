"""Exact ROC AUC that is undefined (NaN) when the labels hold a single class."""
from __future__ import annotations

import torch
from torchmetrics.classification import BinaryAUROC
from torchmetrics.utilities.data import dim_zero_cat


class AUC(BinaryAUROC):
    """torchmetrics' exact binary AUROC, but NaN (not 0) when only one class was seen.

    A split where a task's labels are all 0 (or all 1) has no ranking to measure; reporting 0.0
    there would read as a perfectly wrong model.
    """

    def compute(self) -> torch.Tensor:
        target = dim_zero_cat(self.target) if isinstance(self.target, list) else self.target
        if target.numel() == 0 or bool((target == target.flatten()[0]).all()):
            return torch.tensor(float("nan"))
        return super().compute()
