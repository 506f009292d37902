"""``famo``: fast adaptive multitask optimization.

Liu, Liang, Liu, Stone, Liu. "FAMO: Fast Adaptive Multitask Optimization." NeurIPS 2023.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch

from mtlframe.combiners._grad import adam_step, present_tasks, sync_task_values
from mtlframe.combiners.base import LossCombiner


class FAMO(LossCombiner):
    """Balance the tasks' *log-loss decrease rates* with one backward per step.

    With task logits ``xi`` and ``z = softmax(xi)`` over the tasks present, FAMO descends along
    ``sum_t (z_t / c) grad log L_t``, ``c = sum_t z_t / L_t`` (detached). Since
    ``grad log L_t = grad L_t / L_t`` this equals backpropagating

    .. math:: L = \\sum_t w_t L_t, \\qquad w_t = \\frac{z_t / L_t}{\\sum_j z_j / L_j}
              \\quad (w \\text{ detached, } \\textstyle\\sum_t w_t = 1)

    which is what :meth:`forward` returns (so the logged loss is a weighted mean of task losses;
    one task trains exactly like plain training). After the update the logits move against the
    log-loss *decrease* it produced, ``delta_t = log L_t(before) - log L_t(after)``:
    ``xi <- xi - lr * Adam(J_softmax^T delta + gamma xi)`` — tasks that improved less get more
    weight.

    **Loss after the update.** The paper evaluates the losses again on the same batch after the
    optimizer step (one extra forward). Here the combiner keeps the previous step's (detached)
    losses and, at the next training :meth:`forward`, uses the new batch's losses as the "after"
    values, then updates ``xi`` before weighting — no extra forward, at the price of batch-to-batch
    noise in ``delta`` (averaged out by Adam and the decay ``gamma``). Only tasks present in both
    steps take part in an update. A module that can afford the extra forward may call
    :meth:`update` itself with the re-evaluated losses and then :meth:`forget_previous`.

    State (``xi``, its Adam moments, the previous losses) lives in buffers: saved in checkpoints
    and never touched by the model's optimizer. In training mode the loss values are averaged over
    DDP processes (one small collective per :meth:`forward`), so every process keeps the same
    ``xi``; call :meth:`forward` exactly once per optimizer step in training mode. Outside training
    the current weights are used and nothing is updated.

    Args:
        lr: learning rate of the internal Adam on ``xi`` (paper: 0.025).
        gamma: L2 decay of ``xi`` (paper: 0.01 or 0.001 depending on the benchmark).
        eps: added to losses (losses must be non-negative; FAMO assumes a minimum of 0).
        task_names, weights: injected; the recipe's task weights are not used.

    Raises:
        ValueError: ``lr <= 0``, ``gamma < 0`` or ``eps <= 0``.

    Gradient accumulation: not supported (the "after" losses must follow an optimizer step).
    """

    supports_gradient_accumulation: ClassVar[bool] = False

    def __init__(self, lr: float = 0.025, gamma: float = 0.01, eps: float = 1e-8, *,
                 task_names: list[str], weights: dict[str, float] | None = None) -> None:
        super().__init__(task_names, weights)
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.lr, self.gamma, self.eps = float(lr), float(gamma), float(eps)
        t = len(self.task_names)
        self.register_buffer("logits", torch.zeros(t))
        self.register_buffer("prev_losses", torch.full((t,), float("nan")))
        self.register_buffer("adam_exp_avg", torch.zeros(t))
        self.register_buffer("adam_exp_avg_sq", torch.zeros(t))
        self.register_buffer("adam_steps", torch.zeros(t))
        self._last_weights = {t: 1.0 / len(self.task_names) for t in self.task_names}

    def forward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        tasks = present_tasks(losses, self.task_names)
        values = {t: float(losses[t].detach()) for t in tasks}
        if self.training:
            now = sync_task_values(losses, self.task_names)  # process means: same weights everywhere
            self.update(now)
            self.prev_losses.fill_(float("nan"))
            for t, v in now.items():
                self.prev_losses[self.task_names.index(t)] = float(v)
            values = {t: float(now[t]) for t in tasks}
        idx = torch.tensor([self.task_names.index(t) for t in tasks], device=self.logits.device)
        z = torch.softmax(self.logits[idx], 0)
        inv = 1.0 / (torch.tensor([values[t] for t in tasks], device=z.device) + self.eps)
        w = (z * inv) / (z * inv).sum()
        weights = dict(zip(tasks, w.tolist()))
        if self.training:
            self._last_weights = {t: weights.get(t, 0.0) for t in self.task_names}
        return sum(weights[t] * losses[t] for t in tasks)  # type: ignore[return-value]

    @torch.no_grad()
    def update(self, losses_after: Mapping[str, torch.Tensor | float]) -> None:
        """Step the logits from the previous losses to ``losses_after`` (tasks present in both)."""
        both = [t for t in self.task_names
                if t in losses_after and not torch.isnan(self.prev_losses[self.task_names.index(t)])]
        if not both:
            return
        idx = torch.tensor([self.task_names.index(t) for t in both], device=self.logits.device)
        after = torch.tensor([float(losses_after[t]) for t in both], device=self.logits.device)
        delta = torch.log(self.prev_losses[idx] + self.eps) - torch.log(after + self.eps)
        with torch.enable_grad():
            xi = self.logits[idx].clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(torch.softmax(xi, 0), xi, grad_outputs=delta)
        adam_step(self.logits, grad, self.adam_exp_avg, self.adam_exp_avg_sq, self.adam_steps, idx,
                  lr=self.lr, weight_decay=self.gamma)

    def forget_previous(self) -> None:
        """Drop the stored losses (after calling :meth:`update` with re-evaluated losses)."""
        self.prev_losses.fill_(float("nan"))

    def current_weights(self) -> dict[str, float]:
        return dict(self._last_weights)
