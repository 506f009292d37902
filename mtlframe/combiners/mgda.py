"""``mgda``: multiple-gradient descent, the min-norm point of the task gradients.

Sener, Koltun. "Multi-Task Learning as Multi-Objective Optimization." NeurIPS 2018
(after Désidéri, "Multiple-gradient descent algorithm (MGDA)", 2012).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Literal

import torch

from mtlframe.combiners._grad import (GradientCombiner, min_norm_weights, task_gradients,
                                      unique_trainable)

_NORMALIZATIONS = ("none", "l2", "loss", "loss+")


class MGDA(GradientCombiner):
    """Descend along the min-norm element of the convex hull of the task gradients.

    .. math:: w^* = \\arg\\min_{w \\in \\Delta^K} \\Big\\lVert \\sum_i w_i \\hat g_i \\Big\\rVert^2,
              \\qquad \\hat g_i = g_i / n_i

    solved by Frank-Wolfe on the Gram matrix
    (:func:`~mtlframe.combiners._grad.min_norm_weights`). The result is a Pareto-stationary
    descent direction: it decreases every task's loss unless none can be. The update is
    ``sum_i w_i g_i / n_i``, made by backpropagating ``sum_i (w_i / n_i) L_i`` with the weights
    detached, so task-specific parameters get their task's gradient scaled by the same weight, and
    DDP synchronizes as usual. Example: ``g_1 = (1, 0)``, ``g_2 = (-1, 1)`` give ``w = (0.6, 0.4)``
    and the update ``(0.2, 0.4)``.

    Gradients: by default on ``shared_parameters`` (encoders + the backbone's shared part),
    averaged over processes. With ``upper_bound=True`` (MGDA-UB, the paper's Sec. 3.3) they are
    taken w.r.t. a shared *representation* ``Z`` instead — one backward to ``Z`` per task instead of
    to every shared weight, which is much cheaper with large embedding tables; the weights then
    minimize an upper bound of the shared-parameter objective. The module must pass that tensor:
    ``backward(losses, shared_parameters, manual_backward, representation=Z)`` (this combiner sets
    ``requires_representation = True``). ``Z`` is any tensor (or tensors) that every task's loss
    depends on, e.g. the concatenated encoder output ``x [B, D]``, or a shared-bottom output. Over
    processes the ``[K, K]`` Gram matrices of ``Z``-gradients are averaged and divided by the
    number of processes: exactly the global batch's Gram matrix (every normalization matches one
    process).

    Args:
        normalization: gradient normalizer ``n_i``: ``"none"`` (1), ``"l2"`` (``|g_i|``),
            ``"loss"`` (``L_i``), ``"loss+"`` (``L_i |g_i|``), as in the authors' code.
        upper_bound: MGDA-UB (gradients w.r.t. a representation passed by the module).
        max_iter: Frank-Wolfe steps before the Newton solver takes over (see
            :func:`~mtlframe.combiners._grad.min_norm_weights`; a ``RuntimeWarning`` says if neither reaches ``tol``).
        tol: stop when the duality gap is at most ``tol`` times the squared norm of the
            min-norm point (relative accuracy about ``sqrt(tol)``, whatever the gradients' scales).
        task_names, weights: injected; the recipe's task weights are not used.

    Raises:
        ValueError: unknown ``normalization``, ``max_iter < 1`` or ``tol <= 0``; with ``upper_bound``, no ``representation`` passed
            or it does not require grad.

    Gradient accumulation: not supported (weights are per micro-batch).
    """

    def __init__(self, normalization: Literal["none", "l2", "loss", "loss+"] = "none",
                 upper_bound: bool = False, max_iter: int = 250, tol: float = 1e-10, *,
                 task_names: list[str],
                 weights: dict[str, float] | None = None) -> None:
        super().__init__(task_names, weights)
        if normalization not in _NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {list(_NORMALIZATIONS)}, got {normalization!r}")
        if max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {max_iter}")
        if not tol > 0:
            raise ValueError(f"tol must be > 0, got {tol}")
        self.normalization = normalization
        self.upper_bound = bool(upper_bound)
        self.requires_representation = self.upper_bound
        self.max_iter = int(max_iter)
        self.tol = float(tol)

    def backward(self, losses: Mapping[str, torch.Tensor], shared_parameters: Iterable[torch.nn.Parameter],
                 manual_backward: Callable[[torch.Tensor], None],
                 representation: torch.Tensor | Sequence[torch.Tensor] | None = None) -> None:
        """See :meth:`LossCombiner.backward`; ``representation`` is required with ``upper_bound``."""
        _, params = self._prepare(losses, shared_parameters)
        if self.upper_bound:
            if representation is None:
                raise ValueError("mgda with upper_bound=True needs the shared representation: call "
                                 "backward(losses, shared_parameters, manual_backward, "
                                 "representation=Z) with a tensor every task's loss depends on")
            reps = [representation] if isinstance(representation, torch.Tensor) else list(representation)
            inputs = unique_trainable(reps)
            if not inputs:
                raise ValueError("mgda upper_bound: the representation does not require grad; pass "
                                 "a tensor computed from trainable parameters (e.g. encoder output)")
        if self._single_task(losses, manual_backward):
            return
        if self.upper_bound:
            tg = task_gradients(losses, self.task_names, inputs, gram_only=True)
        else:
            tg = task_gradients(losses, self.task_names, params)
        if self._single_after_sync(tg, losses, manual_backward):
            return
        loss_weights = self.loss_weights(tg.gram(), tg.losses.detach().double().cpu())
        self._backward_weighted(losses, dict(zip(tg.tasks, loss_weights.tolist())), manual_backward)

    def loss_weights(self, gram: torch.Tensor, loss_values: torch.Tensor) -> torch.Tensor:
        """Weights ``w_i / n_i`` to apply to the losses, from ``M = G G^T [K, K]`` and ``L [K]``."""
        m = gram.detach().double().cpu()
        norms = m.diagonal().clamp_min(0).sqrt()
        n = {"none": torch.ones_like(norms), "l2": norms, "loss": loss_values.double(),
             "loss+": loss_values.double() * norms}[self.normalization].clamp_min(1e-12)
        w = min_norm_weights(m / torch.outer(n, n), max_iter=self.max_iter, tol=self.tol)
        return w / n
