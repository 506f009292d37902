"""Binary accuracy with the threshold the docs state: a row is predicted positive when p >= 0.5."""
from __future__ import annotations

import torch
from torchmetrics.classification import BinaryAccuracy as _TorchmetricsBinaryAccuracy

THRESHOLD = 0.5


class BinaryAccuracy(_TorchmetricsBinaryAccuracy):
    """Share of rows whose predicted class equals the label; predicted class 1 when ``p >= 0.5``.

    torchmetrics' ``BinaryAccuracy`` predicts 1 only when ``p > threshold``, so a probability of
    exactly 0.5 would count as class 0; mtlframe decides ``p >= 0.5`` (a row at 0.5 is positive),
    as its documentation says.

    ``update(preds [B] probabilities in [0, 1], target [B] of 0/1)``; ``compute()`` a scalar in
    [0, 1] (sums and counts, exact under DDP).
    """

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        super().update((preds >= THRESHOLD).to(torch.float32), target)
