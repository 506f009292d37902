"""``nash-mtl``: multi-task learning as a Nash bargaining game.

Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik, Fetaya. "Multi-Task Learning as a
Bargaining Game." ICML 2022.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch

from mtlframe.combiners._grad import GradientCombiner


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
        if float((grad * alpha).abs().max()) < tol:                # relative residual (M a) a - 1
            break
        step = torch.linalg.solve(m + torch.diag(1.0 / alpha ** 2), grad)
        t = 1.0
        while bool((alpha - t * step <= 0).any()):
            t *= 0.5
        f0, slope = f(alpha), float(grad @ step)
        while f(alpha - t * step) > f0 - 1e-4 * t * slope and t > 1e-12:
            t *= 0.5
        alpha = alpha - t * step
    return alpha


class NashMTL(GradientCombiner):
    """Weights from the Nash bargaining solution between tasks.

    The update ``d = sum_i alpha_i g_i`` is the bargaining solution of the tasks' utilities
    ``g_i . d`` in a ball; it is characterized by

    .. math:: G G^T \\alpha = 1 / \\alpha, \\qquad \\alpha > 0

    (so ``g_i . d = 1 / alpha_i``: every task improves, those with small gradients get more
    weight). The system is solved by :func:`nash_bargaining_weights` (Newton's method on a convex
    potential) instead of the paper's sequence of convex programs with cvxpy.

    As in the authors' code, ``G G^T`` is first divided by its Frobenius norm, so ``alpha`` is
    scale-free (one task: ``alpha = 1``, plain training) and the update scales with the
    gradients; the solved ``alpha`` satisfies ``(G G^T / |G G^T|_F) alpha = 1 / alpha``. The step
    backpropagates ``sum_t alpha_t L_t`` with ``alpha`` detached (task-specific parameters get
    their task's gradient times ``alpha_t``; DDP syncs as usual). Gradients are taken on
    ``shared_parameters`` (encoders + the backbone's shared part), averaged over processes.

    The authors' ``update_weights_every`` and gradient-norm clipping are not part of this
    combiner (clip in the module with ``clip_gradients`` if wanted).

    Args:
        max_iter: Newton iterations.
        task_names, weights: injected; the recipe's task weights are not used.

    Gradient accumulation: not supported (weights are per micro-batch).
    """

    def __init__(self, max_iter: int = 100, *, task_names: list[str],
                 weights: dict[str, float] | None = None) -> None:
        super().__init__(task_names, weights)
        if max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {max_iter}")
        self.max_iter = int(max_iter)

    def backward(self, losses: Mapping[str, torch.Tensor], shared_parameters: Iterable[torch.nn.Parameter],
                 manual_backward: Callable[[torch.Tensor], None]) -> None:
        got = self._task_gradients(losses, shared_parameters, manual_backward)
        if got is None:
            return
        tg, params = got
        alpha = self.task_weights(tg.gram())
        self._backward_weighted(losses, dict(zip(tg.tasks, alpha.tolist())), manual_backward)

    def task_weights(self, gram: torch.Tensor) -> torch.Tensor:
        """``alpha [K]`` solving ``(M / |M|_F) alpha = 1 / alpha`` for ``M = G G^T``."""
        m = gram.detach().double().cpu()
        norm = torch.linalg.matrix_norm(m)
        if norm <= 0:
            return torch.ones(m.shape[0], dtype=m.dtype)
        return nash_bargaining_weights(m / norm, max_iter=self.max_iter)
