"""Log loss as a torchmetrics metric (sums and counts, so it syncs exactly under DDP)."""
from __future__ import annotations

import torch
import torchmetrics

_EPS = 1e-7


class LogLoss(torchmetrics.Metric):
    """Mean log loss. ``update(probs, target)`` with ``probs [B]`` (binary) or ``[B, C]``."""

    higher_is_better = False
    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        p = preds.double().clamp(_EPS, 1 - _EPS)
        if p.ndim == 2:
            nll = -torch.log(p.gather(1, target.long().view(-1, 1)).squeeze(1))
        else:
            t = target.double()
            nll = -(t * torch.log(p) + (1 - t) * torch.log1p(-p))
        self.total += nll.sum()
        self.count += nll.numel()

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp(min=1)).float()
