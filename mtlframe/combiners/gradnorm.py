"""``gradnorm``: gradient normalization for adaptive loss balancing.

Chen, Badrinarayanan, Lee, Rabinovich. "GradNorm: Gradient Normalization for Adaptive Loss
Balancing in Deep Multitask Networks." ICML 2018.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Literal

import torch

from mtlframe.combiners._grad import GradientCombiner, adam_step, task_gradients


class GradNorm(GradientCombiner):
    """Learn task weights so that weighted gradient norms follow the tasks' training rates.

    With ``G_i = |grad_W w_i L_i| = w_i |grad_W L_i|`` on the shared weights ``W``, ``G_bar`` their
    mean, the inverse training rate ``r_i = (L_i / L_i(0)) / mean_j (L_j / L_j(0))``:

    .. math:: L_{grad} = \\sum_i \\big| G_i - \\overline{G} \\, r_i^{\\alpha} \\big|_1
              \\quad (\\text{target } \\overline{G} r_i^\\alpha \\text{ held constant})

    Each step: the model is updated with ``sum_i w_i L_i`` (``w`` detached — one ordinary
    ``manual_backward``, so DDP syncs), then ``w`` takes one step on ``L_grad``. The weights are
    parametrized as ``w = K softmax(omega)`` over the ``K`` tasks present in the batch: always
    positive and renormalized to sum to ``K`` (``T`` when every task is present), the paper's
    renormalization built in. ``omega`` is a buffer stepped by an internal Adam (``lr``), not by
    the model's optimizer, so the model's weight decay and schedule never touch it; it is saved
    in checkpoints together with ``L_i(0)`` (recorded the first time each task is seen).

    ``W`` (``layer``): ``"last"`` (default, the paper's choice) is the last tensor of
    ``shared_parameters`` with two or more dimensions — with ``shared_parameters = encoders +
    backbone.shared_parameters()`` that is the last weight matrix of the backbone's shared part
    (e.g. shared-bottom's last ``Linear``). With several parallel shared blocks (MMoE experts) that
    is only the last block: use ``"all"`` there (every shared parameter; costlier). Gradient norms
    and losses are averaged over processes, so every process keeps identical weights.

    Args:
        alpha: asymmetry ``alpha >= 0``; larger pulls harder towards equal training rates
            (the paper uses 0.12 - 3; 1.5 is common).
        lr: learning rate of the internal Adam on ``omega``.
        layer: ``"last"`` or ``"all"`` (see above).
        task_names, weights: injected; the recipe's task weights are not used.

    Raises:
        ValueError: ``alpha < 0``, ``lr <= 0`` or an unknown ``layer``.

    Gradient accumulation: not supported (weights are updated per backward call).
    """

    def __init__(self, alpha: float = 1.5, lr: float = 0.025, layer: Literal["last", "all"] = "last", *,
                 task_names: list[str], weights: dict[str, float] | None = None) -> None:
        super().__init__(task_names, weights)
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if layer not in ("last", "all"):
            raise ValueError(f"layer must be 'last' or 'all', got {layer!r}")
        self.alpha = float(alpha)
        self.lr = float(lr)
        self.layer = layer
        t = len(self.task_names)
        self.register_buffer("omega", torch.zeros(t))
        self.register_buffer("initial_losses", torch.full((t,), float("nan")))
        self.register_buffer("adam_exp_avg", torch.zeros(t))
        self.register_buffer("adam_exp_avg_sq", torch.zeros(t))
        self.register_buffer("adam_steps", torch.zeros(t))

    def task_weights(self, tasks: list[str]) -> dict[str, float]:
        """Current weights ``K softmax(omega)`` of ``tasks`` (positive, summing to ``len(tasks)``)."""
        idx = torch.tensor([self.task_names.index(t) for t in tasks], device=self.omega.device)
        w = len(tasks) * torch.softmax(self.omega[idx], 0)
        return dict(zip(tasks, w.tolist()))

    def backward(self, losses: Mapping[str, torch.Tensor], shared_parameters: Iterable[torch.nn.Parameter],
                 manual_backward: Callable[[torch.Tensor], None]) -> None:
        _, params = self._prepare(losses, shared_parameters)
        if self._single_task(losses, manual_backward):
            return
        if self.layer == "last":
            matrices = [p for p in params if p.dim() >= 2]
            params = matrices[-1:] or params[-1:]
        tg = task_gradients(losses, self.task_names, params)
        if self._single_after_sync(tg, losses, manual_backward):
            return
        self._backward_weighted(losses, self.task_weights(tg.tasks), manual_backward)
        self._update(tg.tasks, tg.grads.detach().norm(dim=1), tg.losses.detach())

    @torch.no_grad()
    def _update(self, tasks: list[str], grad_norms: torch.Tensor, loss_values: torch.Tensor) -> None:
        """One step of ``omega`` on ``L_grad`` for the present ``tasks``."""
        device = self.omega.device
        idx = torch.tensor([self.task_names.index(t) for t in tasks], device=device)
        loss_values = loss_values.to(device, self.omega.dtype)
        norms = grad_norms.to(device, self.omega.dtype)
        init = self.initial_losses[idx]
        init = torch.where(torch.isnan(init), loss_values, init)
        self.initial_losses[idx] = init
        ratio = loss_values / init.clamp_min(1e-12)
        rate = ratio / ratio.mean().clamp_min(1e-12)                           # r_i
        with torch.enable_grad():
            omega = self.omega[idx].clone().requires_grad_(True)
            g_w = len(tasks) * torch.softmax(omega, 0) * norms                 # G_i = w_i |grad L_i|
            target = (g_w.mean() * rate ** self.alpha).detach()
            (grad,) = torch.autograd.grad((g_w - target).abs().sum(), omega)
        adam_step(self.omega, grad, self.adam_exp_avg, self.adam_exp_avg_sq, self.adam_steps, idx,
                  lr=self.lr)
