"""Reduce the learning rate when the monitored validation value stops improving
(``torch.optim.lr_scheduler.ReduceLROnPlateau``)."""
from __future__ import annotations

from typing import Any, ClassVar

import torch

from mtlframe.errors import ArgumentError
from mtlframe.schedulers.base import LRSchedule


class Plateau(LRSchedule):
    """After each validation, every group's rate is multiplied by ``factor`` once the
    monitored value (the recipe's ``checkpoint.monitor``, ``val/score`` by default, in its
    direction) has not improved by more than ``threshold`` (relative) for ``patience``
    validations; never below ``min_lr``. Steps once per epoch (needs a validation split).

    Args:
        factor: multiplier of each reduction, in (0, 1).
        patience: validations without improvement before a reduction, >= 0.
        threshold: relative improvement that counts, >= 0.
        cooldown: validations after a reduction before counting again, >= 0.
        min_lr: floor of every group's rate, >= 0.

    Raises:
        ArgumentError: a value outside the ranges above.
    """

    default_interval: ClassVar[str] = "epoch"
    intervals: ClassVar[tuple[str, ...]] = ("epoch",)
    needs_monitor: ClassVar[bool] = True

    def __init__(self, factor: float = 0.1, patience: int = 2, threshold: float = 1e-4, cooldown: int = 0,
                 min_lr: float = 0.0) -> None:
        if not 0.0 < factor < 1.0:
            raise ArgumentError("factor", f"factor must be in (0, 1), got {factor}")
        for key, value in (("patience", patience), ("threshold", threshold), ("cooldown", cooldown),
                           ("min_lr", min_lr)):
            if value < 0:
                raise ArgumentError(key, f"{key} must be >= 0, got {value}")
        self.factor, self.patience, self.threshold = float(factor), int(patience), float(threshold)
        self.cooldown, self.min_lr = int(cooldown), float(min_lr)

    def build(self, optimizer: torch.optim.Optimizer, total_steps: int, mode: str = "max") -> Any:
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=self.factor,
                                                          patience=self.patience, threshold=self.threshold,
                                                          cooldown=self.cooldown, min_lr=self.min_lr)
