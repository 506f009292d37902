"""The one-cycle policy (Smith & Topin, "Super-Convergence: Very Fast Training of Neural Networks
Using Large Learning Rates", 2019; ``torch.optim.lr_scheduler.OneCycleLR``)."""
from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch

from mtlframe.errors import ArgumentError
from mtlframe.schedulers.base import LRSchedule


class OneCycle(LRSchedule):
    """Each group's rate rises from ``lr_0 / div_factor`` to its peak ``lr_0`` (the group's own
    rate: ``optimizer.lr``, ``sparse_lr``, a text encoder's ``lr``) over the first ``pct_start``
    of the run, then anneals to ``lr_0 / (div_factor * final_div_factor)`` at its last step.
    Its state holds the run's length, so ``train --resume`` refuses to extend such a run
    (``extendable = False``).

    Args:
        pct_start: fraction of the run spent rising, in (0, 1).
        div_factor: ``lr_0`` / the first rate, > 0.
        final_div_factor: the first rate / the last rate, > 0.
        anneal_strategy: ``cos`` or ``linear``.
        cycle_momentum: also cycle Adam's beta1 / SGD's momentum inversely (every group must
            have one: not with sparse embedding tables).

    Raises:
        ArgumentError: a value outside the ranges above.
    """

    extendable: ClassVar[bool] = False   # OneCycleLR's state holds total_steps

    def __init__(self, pct_start: float = 0.3, div_factor: float = 25.0, final_div_factor: float = 1e4,
                 anneal_strategy: Literal["cos", "linear"] = "cos", cycle_momentum: bool = False) -> None:
        if not 0.0 < pct_start < 1.0:
            raise ArgumentError("pct_start", f"pct_start must be in (0, 1), got {pct_start}")
        for key, value in (("div_factor", div_factor), ("final_div_factor", final_div_factor)):
            if value <= 0:
                raise ArgumentError(key, f"{key} must be > 0, got {value}")
        self.pct_start, self.div_factor, self.final_div_factor = float(pct_start), float(div_factor), \
            float(final_div_factor)
        self.anneal_strategy, self.cycle_momentum = anneal_strategy, bool(cycle_momentum)

    def build(self, optimizer: torch.optim.Optimizer, total_steps: int, mode: str = "max") -> Any:
        """``OneCycleLR`` over every group of ``optimizer``.

        Raises:
            ArgumentError: ``cycle_momentum`` with a group that has no momentum or beta1 (row-wise
                Adagrad tables), or over sparse tables (torch reads them from the optimizer's
                defaults, which the one optimizer over dense and sparse groups has not).
        """
        if self.cycle_momentum:
            names = [g.get("name", f"group{i}") for i, g in enumerate(optimizer.param_groups)
                     if "betas" not in g and "momentum" not in g]
            if names:
                raise ArgumentError("cycle_momentum", f"cycle_momentum: group {names[0]!r} has no momentum or beta1 "
                                    "to cycle (row-wise Adagrad); set cycle_momentum: false")
            if "betas" not in optimizer.defaults and "momentum" not in optimizer.defaults:
                raise ArgumentError("cycle_momentum", "cycle_momentum is not supported with sparse embedding "
                                    "tables (one optimizer over dense and sparse groups); set cycle_momentum: false "
                                    "or sparse: false")
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total_steps,
            pct_start=self.pct_start, div_factor=self.div_factor, final_div_factor=self.final_div_factor,
            anneal_strategy=self.anneal_strategy, cycle_momentum=self.cycle_momentum)
