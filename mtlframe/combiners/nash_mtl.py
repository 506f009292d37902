"""``nash-mtl``: multi-task learning as a Nash bargaining game.

Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik, Fetaya. "Multi-Task Learning as a
Bargaining Game." ICML 2022.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch

from mtlframe.combiners._grad import GradientCombiner, warn_once


def nash_bargaining_weights(gram: torch.Tensor, max_iter: int = 100, tol: float = 1e-10,
                            ridge: float = 1e-6) -> torch.Tensor:
    """Solve ``M alpha = 1 / alpha`` (element-wise), ``alpha > 0``, for ``M = G G^T [K, K]``.

    The system is the stationarity condition of the strictly convex
    ``f(alpha) = 1/2 alpha^T M alpha - sum_i log alpha_i``, minimized here by Newton's method
    (Hessian ``M + diag(1 / alpha^2)``) with a step kept inside ``alpha > 0`` and Armijo
    backtracking; a few iterations reach machine precision. When ``M`` is (nearly) singular —
    linearly dependent gradients, where ``alpha`` would diverge along the null space —
    ``ridge * mean(diag M)`` is added to its diagonal so a (large but finite) solution exists.

    Returns:
        ``alpha [K]`` (float64).

    Warns:
        RuntimeWarning: ``max_iter`` iterations did not reach the relative residual ``tol``.
    """
    m = gram.detach().double().cpu()
    k = m.shape[0]
    m = 0.5 * (m + m.T)
    level = ridge * max(float(m.diagonal().clamp_min(0).mean()), 1e-30)
    if float(torch.linalg.eigvalsh(m).min()) < level:
        m = m + level * torch.eye(k, dtype=m.dtype)
    alpha = 1.0 / m.diagonal().sqrt()

    def f(a: torch.Tensor) -> float:
        return float(0.5 * a @ m @ a - torch.log(a).sum())

    for _ in range(max_iter):
        grad = m @ alpha - 1.0 / alpha
        residual = float((grad * alpha).abs().max())              # relative residual (M a) a - 1
        if residual < tol:
            break
        step = torch.linalg.solve(m + torch.diag(1.0 / alpha ** 2), grad)
        t = 1.0
        while bool((alpha - t * step <= 0).any()):
            t *= 0.5
        f0, slope = f(alpha), float(grad @ step)
        while f(alpha - t * step) > f0 - 1e-4 * t * slope and t > 1e-12:
            t *= 0.5
        alpha = alpha - t * step
    else:
        residual = float(((m @ alpha) * alpha - 1.0).abs().max())
        if residual >= tol:
            warn_once("nash-mtl", f"nash-mtl: max_iter={max_iter} Newton iterations left the bargaining "
                                  f"condition (G G^T alpha) alpha = 1 off by {residual:.3g} > {tol:g}; raise "
                                  "max_iter. Later steps that stop short are not reported again.")
    return alpha


class NashMTL(GradientCombiner):
    """Weights from the Nash bargaining solution between tasks.

    The update ``d = sum_i alpha_i g_i`` is the bargaining solution of the tasks' utilities
    ``g_i . d`` (Navon et al. 2022, Claim 3.1); it is characterized by

    .. math:: G G^T \\alpha = 1 / \\alpha, \\qquad \\alpha > 0

    on the **unnormalized** Gram matrix ``G G^T [K, K]`` of the per-task gradients ``G [K, P]``,
    so ``g_i . d = 1 / alpha_i``: every task improves, and a task with a small gradient gets a
    large weight. Consequences: scaling all gradients by ``s`` scales ``alpha`` by ``1 / s`` and
    leaves ``d`` unchanged, and ``|d|^2 = alpha^T G G^T alpha = K`` whatever the gradients' scale.
    Worked example: ``g_a = (1, 0)``, ``g_b = (0, 4)`` give ``alpha = (1, 0.25)`` and
    ``d = (1, 1)``.

    The system is solved by :func:`nash_bargaining_weights` (Newton's method on a convex
    potential) instead of the paper's sequence of convex programs with cvxpy. Like the authors'
    code, the solver works on ``G G^T / n`` with ``n = |G G^T|_F`` and the scale is put back
    (``alpha = beta / sqrt(n)``), which solves the unnormalized system exactly.

    The step backpropagates ``sum_t alpha_t L_t`` with ``alpha`` detached, so task-specific
    parameters get their task's gradient times ``alpha_t``. With ``max_norm > 0`` the shared
    update ``d`` is scaled to norm ``max_norm`` when it is longer, as the authors' code does with
    ``clip_grad_norm_`` on the shared parameters after the backward (their default is
    ``max_norm = 1.0``; ``|d| = sqrt(K)`` means it then always applies for ``K >= 2``);
    task-specific parameters are not clipped. Gradients are taken on ``shared_parameters``
    (encoders + the backbone's shared part), averaged over processes. :meth:`current_weights`
    reports ``alpha`` (before any clipping).

    The authors' ``update_weights_every`` (reuse ``alpha`` for several steps to save time) is not
    implemented: ``alpha`` is solved every step.

    Args:
        max_iter: Newton iterations (the solver stops earlier at a relative residual of 1e-10;
            a few iterations usually suffice).
        max_norm: clip the shared update ``d`` to this norm (``0``: no clipping, the paper's
            update). Use ``1.0`` to reproduce the authors' experiments.
        task_names, weights: injected; the recipe's task weights are not used.

    Raises:
        ValueError: ``max_iter < 1`` or ``max_norm < 0``.

    Gradient accumulation: not supported (weights are per micro-batch).
    """

    def __init__(self, max_iter: int = 100, max_norm: float = 0.0, *, task_names: list[str],
                 weights: dict[str, float] | None = None) -> None:
        super().__init__(task_names, weights)
        if max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {max_iter}")
        if not max_norm >= 0:
            raise ValueError(f"max_norm must be >= 0 (0 = no clipping), got {max_norm}")
        self.max_iter = int(max_iter)
        self.max_norm = float(max_norm)

    def backward(self, losses: Mapping[str, torch.Tensor], shared_parameters: Iterable[torch.nn.Parameter],
                 manual_backward: Callable[[torch.Tensor], None]) -> None:
        got = self._task_gradients(losses, shared_parameters, manual_backward)
        if got is None:
            return
        tg, params = got
        gram = tg.gram()
        alpha = self.task_weights(gram)
        weights = dict(zip(tg.tasks, alpha.tolist()))
        norm = float(alpha @ gram @ alpha) ** 0.5                              # |d|
        if self.max_norm > 0 and norm > self.max_norm:
            d = alpha.to(tg.grads) @ tg.grads                                  # (P,)
            self._set_weights(weights)
            total = sum(weights[t] * loss for t, loss in losses.items())
            self._backward_direction(total, params, d * (self.max_norm / norm), d,  # type: ignore[arg-type]
                                     manual_backward)
            return
        self._backward_weighted(losses, weights, manual_backward)

    def task_weights(self, gram: torch.Tensor) -> torch.Tensor:
        """``alpha [K]`` (float64) solving ``M alpha = 1 / alpha`` for ``M = G G^T [K, K]``.

        Solved on ``M / |M|_F`` and rescaled (``alpha = beta / sqrt(|M|_F)``). All-zero gradients
        (``M = 0``, no solution) give ``alpha = 1``.
        """
        m = gram.detach().double().cpu()
        norm = float(torch.linalg.matrix_norm(m))
        if not norm > 0:
            return torch.ones(m.shape[0], dtype=m.dtype)
        return nash_bargaining_weights(m / norm, max_iter=self.max_iter) / norm ** 0.5
