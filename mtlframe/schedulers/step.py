"""Step decay: the learning rate times ``gamma`` every ``step_size`` epochs (or steps)
(``torch.optim.lr_scheduler.StepLR``; the schedule of He et al., "Deep Residual Learning", CVPR 2016)."""
from __future__ import annotations

from typing import Any, ClassVar

import torch

from mtlframe.errors import ArgumentError
from mtlframe.schedulers.base import LRSchedule


class StepDecay(LRSchedule):
    """Each group's rate ``lr_0 * gamma ** (t // step_size)`` at step ``t`` (0-based, in
    ``interval`` units; per epoch by default).

    Args:
        step_size: epochs (or steps) between decays, >= 1.
        gamma: the factor of each decay, in (0, 1].

    Raises:
        ArgumentError: ``step_size`` < 1 or ``gamma`` outside (0, 1].
    """

    default_interval: ClassVar[str] = "epoch"

    def __init__(self, step_size: int = 10, gamma: float = 0.1) -> None:
        if step_size < 1:
            raise ArgumentError("step_size", f"step_size must be >= 1, got {step_size}")
        if not 0.0 < gamma <= 1.0:
            raise ArgumentError("gamma", f"gamma must be in (0, 1], got {gamma}")
        self.step_size, self.gamma = int(step_size), float(gamma)

    def build(self, optimizer: torch.optim.Optimizer, total_steps: int, mode: str = "max") -> Any:
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=self.step_size, gamma=self.gamma)
