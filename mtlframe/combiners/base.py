"""The loss-combiner contract: per-task losses -> one update of the model.

Two families:

* **loss-level** (``requires_manual_backward = False``): :meth:`LossCombiner.forward` returns the
  total loss ``L = f(L_1, ..., L_T)``; Lightning's automatic optimization backpropagates it.
* **gradient-level** (``requires_manual_backward = True``): :meth:`LossCombiner.backward` gets the
  per-task losses and the shared parameters, computes per-task gradients itself and leaves the
  combined gradient in every parameter's ``.grad``; the module switches to manual optimization
  for such combiners (no name checks anywhere).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar

import torch
from torch import nn


class LossCombiner(nn.Module):
    """Base class of loss combiners (an ``nn.Module`` so learnable weights are optimized).

    Constructor: typed hyper-parameters plus the injected ``task_names: list[str]`` and
    ``weights: dict[str, float]`` (the recipe's per-task ``weight``, default 1.0).

    ``losses`` passed to :meth:`forward` / :meth:`backward` hold one scalar per task that has at
    least one labelled row in the step's *global* batch (over all processes); a task labelled
    nowhere is absent from the mapping and must get no gradient. Under DDP every process passes
    the same tasks, and each process's ``L_t`` is its share of the global masked mean
    (``sum over its labelled rows / global labelled count * world size``), so the mean over
    processes of ``L_t`` (and of its gradient, which DDP averages) is exactly the loss of one
    process on the global batch — also when the processes hold different numbers of labelled rows.
    A process with no labelled row of a present task passes a zero loss still attached to the
    task's tower. Combiners therefore never need to know which process holds which labels.
    """

    injected: ClassVar[tuple[str, ...]] = ("task_names", "weights")
    requires_manual_backward: ClassVar[bool] = False
    #: whether the method is correct when Lightning accumulates gradients over several batches
    supports_gradient_accumulation: ClassVar[bool] = True
    #: gradient-level methods that need the shared representation ``Z`` (MGDA-UB) set this; the
    #: module then calls ``backward(..., representation=Z)`` with ``Z`` the encoders' output ``x [B, D]``
    requires_representation: bool = False

    def __init__(self, task_names: Sequence[str], weights: Mapping[str, float] | None = None) -> None:
        super().__init__()
        self.task_names = list(task_names)
        self.static_weights = {t: float((weights or {}).get(t, 1.0)) for t in self.task_names}

    def forward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:  # pragma: no cover
        """Combine per-task scalar losses into the total loss (a scalar tensor)."""
        raise NotImplementedError

    def backward(self, losses: Mapping[str, torch.Tensor], shared_parameters: Sequence[nn.Parameter],
                 manual_backward: Callable[[torch.Tensor], None]) -> None:  # pragma: no cover
        """Gradient-level combiners: fill ``.grad`` of all parameters for this step.

        Args:
            losses: per-task scalar losses (graph attached).
            shared_parameters: parameters shared by the tasks (encoders + the backbone's shared part).
            manual_backward: the Lightning module's ``manual_backward`` (use it for the final
                ``backward`` so precision plugins and DDP gradient sync apply).
        """
        raise NotImplementedError

    def current_weights(self) -> dict[str, float]:
        """Task weights used in the last step, logged as ``train/weight/<task>``."""
        return dict(self.static_weights)

    def logged_values(self) -> dict[str, float]:
        """Extra values of the combiner's state, logged as ``train/<key>`` with ``train/loss``
        (every ``log_every_n_steps``); e.g. ``{"log_var/<task>": ...}``. Empty by default."""
        return {}

    def on_train_epoch_end(self, epoch_losses: Mapping[str, float]) -> None:
        """Called with each task's mean training loss of the finished epoch (for DWA-like methods)."""
