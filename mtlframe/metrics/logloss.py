"""Log loss as a torchmetrics metric (sums and counts, so it syncs exactly under DDP)."""
from __future__ import annotations

import torch
import torchmetrics

_EPS = 1e-7


class LogLoss(torchmetrics.Metric):
    """Mean log loss (negative log-likelihood of the true label), in nats.

    ``update(probs, target)`` with ``probs [B]`` (binary: P(label = 1)) or ``[B, C]`` (multiclass),
    ``target [B]`` (0/1, or class indices). Each probability is clipped to ``[1e-7, 1 - 1e-7]``
    (``_EPS = 1e-7``, computed in float64) before its log, so a confident wrong prediction
    (p = 0 for the true class) costs ``-log(1e-7) ≈ 16.12`` rather than infinity. For multiclass
    rows only the true class's probability is clipped (the rows are not renormalized).
    ``compute()`` is the mean over rows seen (sums and counts: exact under DDP); NaN when none.
    """

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
        if int(self.count) == 0:  # no row: undefined, never a perfect 0
            return torch.tensor(float("nan"))
        return (self.total / self.count).float()
