"""Linear warm-up to the base learning rate, then constant (Goyal et al., "Accurate, Large
Minibatch SGD: Training ImageNet in 1 Hour", 2017)."""
from __future__ import annotations

from typing import Any

import torch

from mtlframe.errors import ArgumentError
from mtlframe.schedulers.base import LRSchedule


class LinearWarmup(LRSchedule):
    """Each group's rate ``lr_0`` times ``f(t) = s + (1 - s) * min(t, W) / W`` at step ``t``
    (0-based): from ``s * lr_0`` up to ``lr_0`` over ``W`` steps, then ``lr_0``.
    ``torch.optim.lr_scheduler.LinearLR(start_factor=s, end_factor=1, total_iters=W)``.

    Args:
        warmup: warm-up steps ``W`` >= 1 (``interval`` units).
        start_factor: ``s`` in (0, 1], the first step's fraction of the rate.

    Raises:
        ArgumentError: ``warmup`` < 1, ``start_factor`` outside (0, 1].
    """

    def __init__(self, warmup: int = 100, start_factor: float = 0.01) -> None:
        if warmup < 1:
            raise ArgumentError("warmup", f"warmup must be >= 1 step, got {warmup}")
        if not 0.0 < start_factor <= 1.0:
            raise ArgumentError("start_factor", f"start_factor must be in (0, 1], got {start_factor}")
        self.warmup, self.start_factor = int(warmup), float(start_factor)

    def build(self, optimizer: torch.optim.Optimizer, total_steps: int, mode: str = "max") -> Any:
        return torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=self.start_factor, end_factor=1.0,
                                                 total_iters=self.warmup)
