"""``uncertainty``: task weights from learned homoscedastic uncertainty.

Kendall, Gal, Cipolla. "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene Geometry
and Semantics." CVPR 2018.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import nn

from mtlframe.combiners._grad import present_tasks
from mtlframe.combiners.base import LossCombiner


class UncertaintyWeighting(LossCombiner):
    """Each task's loss is weighted by a learned precision ``1/sigma_t^2``, with a log penalty.

    With the learned log-variance ``s_t = log sigma_t^2`` (initialized to 0):

    .. math:: L = \\sum_t c_t \\, e^{-s_t} L_t + \\tfrac{1}{2} s_t,
              \\qquad c_t = \\tfrac12 \\text{ (regression)}, \\; c_t = 1 \\text{ (otherwise)}

    — the paper's Gaussian likelihood ``L_t / (2 sigma^2) + log sigma`` for regression (Eq. 5,
    optimum ``sigma^2 = L_t``) and its scaled-softmax approximation ``L_t / sigma^2 + log sigma``
    for classification (Eq. 10, optimum ``sigma^2 = 2 L_t``). A noisier task ends with a larger
    ``s_t`` and a smaller weight. The task type comes from the injected ``task_types``; a task
    without a type uses the classification form (so at initialization the weights are 1 and one
    task trains exactly like plain training).

    ``s`` is an ``nn.Parameter``: the module's optimizer must include the combiner's parameters.
    A task absent from the batch contributes neither its loss nor its penalty (``s_t`` gets no
    gradient). :meth:`current_weights` reports ``c_t e^{-s_t}`` (0.0 for a task absent from the
    last training step), logged as ``train/weight/<task>``; :meth:`logged_values` reports the
    log-variances ``s_t``, logged as ``train/log_var/<task>``.

    **The total loss may be negative**: the penalty ``s_t / 2`` is negative once a task's loss is
    below its optimum's scale (``s_t < 0`` when ``L_t < 1`` for regression, ``< 1/2`` otherwise),
    so ``train/loss`` falling below zero is expected, not a bug; compare runs on the per-task
    losses (``train/loss/<task>``) or the validation metrics instead.

    Args:
        task_names, weights, task_types: injected (``task_types``: ``{task: "binary" |
            "multiclass" | "regression" | ...}``); the recipe's task weights are not used.

    Gradient accumulation: supported (a plain differentiable loss).
    """

    injected: ClassVar[tuple[str, ...]] = ("task_names", "weights", "task_types")
    supports_gradient_accumulation: ClassVar[bool] = True

    def __init__(self, *, task_names: list[str], weights: dict[str, float] | None = None,
                 task_types: dict[str, str] | None = None) -> None:
        super().__init__(task_names, weights)
        types = task_types or {}
        self.factors = {t: 0.5 if types.get(t) == "regression" else 1.0 for t in self.task_names}
        self.log_vars = nn.Parameter(torch.zeros(len(self.task_names)))
        self._last_weights = dict(self.factors)
        self._last_tasks: list[str] | None = None

    def forward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        tasks = present_tasks(losses, self.task_names)
        total = losses[tasks[0]].new_zeros(())
        for t in tasks:
            s = self.log_vars[self.task_names.index(t)]
            total = total + self.factors[t] * torch.exp(-s) * losses[t] + 0.5 * s
        if self.training:  # read (one host sync) only when the weights are logged
            self._last_tasks = list(tasks)
        return total

    def current_weights(self) -> dict[str, float]:
        if self._last_tasks is None:
            return dict(self._last_weights)
        s = self.log_vars.detach().tolist()
        return {t: self.factors[t] * math.exp(-s[i]) if t in self._last_tasks else 0.0
                for i, t in enumerate(self.task_names)}

    def logged_values(self) -> dict[str, float]:
        """``{"log_var/<task>": s_t}``, the learned log-variances."""
        return {f"log_var/{t}": v for t, v in zip(self.task_names, self.log_vars.detach().tolist())}
