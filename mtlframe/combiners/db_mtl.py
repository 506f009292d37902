"""``db-mtl``: dual-balancing multi-task learning.

Lin, Ye, Xu, Shi, Zhang, Kwok. "Dual-Balancing for Multi-Task Learning." arXiv:2308.12029, 2023.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from mtlframe.combiners._grad import GradientCombiner


class DBMTL(GradientCombiner):
    """Balance loss scales by a log transform and gradient magnitudes by rescaling to the largest.

    1. *Loss-scale balancing*: every task optimizes ``log(L_t + eps)`` (so ``grad = grad L_t /
       L_t``; task-specific parameters get exactly this gradient).
    2. *Gradient-magnitude balancing* on the shared parameters: an exponential moving average of
       each task's log-loss gradient,
       ``g_hat_t <- beta_k g_hat_t + (1 - beta_k) grad log L_t``, ``beta_k = beta / k^sigma``
       (``k`` the task's step count), then the update

       .. math:: d = \\max_t \\lVert \\hat g_t \\rVert \\sum_t \\hat g_t / \\lVert \\hat g_t \\rVert

       i.e. every task's direction scaled to the largest magnitude.

    ``grad log L_t`` is computed as ``grad L_t / L_t`` with ``L_t`` the (process-averaged) loss of
    the global batch, so multi-process training equals one process on the global batch (the log
    of a per-process loss would not). ``d`` mixes past gradients, so it is not a weighting of this
    batch's losses: the step backpropagates ``sum_t L_t / L_t`` (detached denominators, i.e. the
    gradient of ``sum_t log L_t``) and replaces the shared part of that gradient by ``d`` (see
    :mod:`mtlframe.combiners._grad`; every process keeps the same moving average). Gradients are taken on
    ``shared_parameters`` (encoders + the backbone's shared part). :meth:`current_weights`
    reports the scale factors ``max_t |g_hat_t| / |g_hat_t|``. The moving average (``[T, P]``) is
    not saved in checkpoints; it restarts from zero after resuming.

    With one task there is nothing to balance: the step is plain training on ``L`` (not
    ``log L``).

    Args:
        beta: moving-average factor ``beta`` in ``[0, 1)`` (paper and LibMTL: 0.9).
        beta_sigma: decay exponent ``sigma >= 0`` of ``beta_k = beta / k^sigma`` (0: constant).
        eps: added to the loss inside the log (losses must be non-negative).
        task_names, weights: injected; the recipe's task weights are not used.

    Raises:
        ValueError: ``beta`` outside ``[0, 1)``, negative ``beta_sigma`` or non-positive ``eps``.

    Gradient accumulation: not supported (the moving average advances per backward call).
    """

    def __init__(self, beta: float = 0.9, beta_sigma: float = 0.0, eps: float = 1e-8, *,
                 task_names: list[str], weights: dict[str, float] | None = None) -> None:
        super().__init__(task_names, weights)
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        if beta_sigma < 0:
            raise ValueError(f"beta_sigma must be >= 0, got {beta_sigma}")
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.beta = float(beta)
        self.beta_sigma = float(beta_sigma)
        self.eps = float(eps)
        self.register_buffer("steps", torch.zeros(len(self.task_names)))
        self.register_buffer("grad_ema", None, persistent=False)   # (T, P) once the shared width is known

    def get_extra_state(self) -> dict[str, Any]:
        """The gradient EMA (``None`` before the first step) goes into checkpoints, beside ``steps``:
        a resumed run (``train --resume``) continues it instead of restarting from zeros."""
        return {"grad_ema": self.grad_ema}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.grad_ema = state.get("grad_ema")

    def backward(self, losses: Mapping[str, torch.Tensor], shared_parameters: Iterable[torch.nn.Parameter],
                 manual_backward: Callable[[torch.Tensor], None]) -> None:
        got = self._task_gradients(losses, shared_parameters, manual_backward)
        if got is None:
            return
        tg, params = got
        # grad log L = grad L / L, with L the loss of the global batch (process mean)
        inv = 1.0 / (tg.losses.to(tg.grads) + self.eps)                        # (K,)
        g = tg.grads * inv[:, None]                                            # (K, P)
        inv_of = dict(zip(tg.tasks, inv.tolist()))
        if self.grad_ema is None or self.grad_ema.shape[1] != g.shape[1]:
            self.grad_ema = torch.zeros(len(self.task_names), g.shape[1], dtype=g.dtype, device=g.device)
        idx = torch.tensor([self.task_names.index(t) for t in tg.tasks], device=g.device)
        with torch.no_grad():
            self.steps[idx.to(self.steps.device)] += 1
            beta_k = (self.beta / self.steps[idx.to(self.steps.device)] ** self.beta_sigma).to(g)  # (K,)
            ema = g + beta_k[:, None] * (self.grad_ema[idx] - g)
            self.grad_ema[idx] = ema
            norms = ema.norm(dim=1)
            scale = norms.max() / norms.clamp_min(1e-12)                       # (K,)
            direction = scale @ ema                                            # (P,)
        self._set_weights(dict(zip(tg.tasks, scale.tolist())))
        total = sum(inv_of[t] * loss for t, loss in losses.items())            # grad = grad log L
        self._backward_direction(total, params, direction, g.sum(0), manual_backward)
