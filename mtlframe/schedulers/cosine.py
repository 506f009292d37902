"""Cosine annealing with an optional linear warm-up (Loshchilov & Hutter, "SGDR: Stochastic
Gradient Descent with Warm Restarts", ICLR 2017, without restarts; warm-up as in Goyal et al.,
"Accurate, Large Minibatch SGD", 2017)."""
from __future__ import annotations

import math
from typing import Any

import torch

from mtlframe.errors import ArgumentError
from mtlframe.schedulers.base import LRSchedule


class Cosine(LRSchedule):
    """Each group's learning rate ``lr_0`` times a factor ``f(t)`` of the step ``t`` (0-based,
    in ``interval`` units) of a run of ``T`` steps, ``W`` of them warm-up::

        f(t) = t / W                                                   t < W
        f(t) = r + (1 - r) * (1 + cos(pi * (t - W) / (T - W))) / 2     W <= t <= T

    so the rate rises linearly from 0 to ``lr_0`` over the warm-up, then falls along half a
    cosine to ``r * lr_0`` at the end of the run. Built on ``torch.optim.lr_scheduler.LambdaLR``
    (one factor for every group, so the sparse tables', the text encoder's and the dense rates
    keep their ratios).

    Args:
        warmup: warm-up steps ``W`` (0: none), in ``interval`` units; less than the run.
        min_lr_ratio: ``r``, the final rate as a fraction of each group's rate, in [0, 1].

    Raises:
        ArgumentError: ``warmup`` < 0 or not shorter than the run; ``min_lr_ratio`` outside [0, 1].
    """

    def __init__(self, warmup: int = 0, min_lr_ratio: float = 0.0) -> None:
        if warmup < 0:
            raise ArgumentError("warmup", f"warmup must be >= 0 steps, got {warmup}")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ArgumentError("min_lr_ratio", f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
        self.warmup, self.min_lr_ratio = int(warmup), float(min_lr_ratio)

    def factor(self, t: int, total: int) -> float:
        """``f(t)`` above for a run of ``total`` steps."""
        w, r = self.warmup, self.min_lr_ratio
        if t < w:
            return t / w
        progress = min(1.0, (t - w) / max(1, total - w))
        return r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def build(self, optimizer: torch.optim.Optimizer, total_steps: int, mode: str = "max") -> Any:
        if self.warmup >= total_steps:
            raise ArgumentError("warmup", f"warmup ({self.warmup}) must be shorter than the run ({total_steps} "
                                          "steps of the schedule's interval)")
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: self.factor(t, total_steps))
