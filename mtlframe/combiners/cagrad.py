"""``cagrad``: conflict-averse gradient descent.

Liu, Liu, Jin, Stone, Liu. "Conflict-Averse Gradient Descent for Multi-task Learning."
NeurIPS 2021.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Literal

import torch

from mtlframe.combiners._grad import GradientCombiner, minimize_on_simplex


class CAGrad(GradientCombiner):
    """Average gradient, bent towards the worst-off task within a ball of radius ``c |g_0|``.

    With ``g_0 = (1/K) sum_i g_i`` the average gradient, CAGrad solves

    .. math:: \\max_{d} \\min_i g_i \\cdot d \\quad \\text{s.t.} \\quad
              \\lVert d - g_0 \\rVert \\le c \\lVert g_0 \\rVert

    through its dual over the simplex,
    ``w* = argmin_w  g_w . g_0 + sqrt(phi) |g_w|``, ``g_w = sum_i w_i g_i``, ``phi = c^2 |g_0|^2``,
    and updates with ``d = g_0 + (sqrt(phi) / |g_w*|) g_w*``, divided by ``1 + c^2`` (the
    authors' default rescaling). ``c = 0`` gives the average gradient exactly. The dual is solved
    on the ``[K, K]`` Gram matrix (normalized by its mean diagonal, so the dual is ``O(1)``) to a
    certified duality gap ``tol`` by an interior-point Newton method
    (:func:`~mtlframe.combiners._grad.minimize_on_simplex`); the authors' code calls scipy's
    SLSQP with its default tolerance instead. Ill-conditioned gradients converge as well as
    well-conditioned ones; if ``max_iter`` Newton steps do not reach ``tol`` a
    ``RuntimeWarning`` gives the gap reached.

    ``d = sum_i coef_i g_i`` with ``coef_i = (1/K + lambda w_i) / rescale``; :meth:`current_weights`
    reports ``coef``. Shared parameters (encoders + the backbone's shared part) get ``d``;
    task-specific parameters their own task's plain gradient. Per-task gradients are averaged over
    processes first, so multi-process training equals one process on the global batch.

    Args:
        c: radius factor ``c >= 0`` (the paper uses 0.4-0.5 on most benchmarks).
        rescale: divide ``d`` by ``"1+c^2"`` (default), ``"1+c"``, or not at all (``"none"``).
        tol: duality gap at which the dual solver stops (``> 0``; the dual's value is certified
            within ``tol`` of its minimum, in units of the mean squared task-gradient norm).
        max_iter: cap on the dual solver's Newton steps (``>= 1``; 15-40 are typical).
        task_names, weights: injected; the recipe's task weights are not used.

    Raises:
        ValueError: ``c < 0``, an unknown ``rescale``, ``tol <= 0`` or ``max_iter < 1``.

    Gradient accumulation: not supported (the dual is solved per micro-batch).
    """

    def __init__(self, c: float = 0.4, rescale: Literal["1+c^2", "1+c", "none"] = "1+c^2",
                 tol: float = 1e-8, max_iter: int = 100, *,
                 task_names: list[str], weights: dict[str, float] | None = None) -> None:
        super().__init__(task_names, weights)
        if c < 0:
            raise ValueError(f"c must be >= 0, got {c}")
        divisors = {"1+c^2": 1.0 + c * c, "1+c": 1.0 + c, "none": 1.0}
        if rescale not in divisors:
            raise ValueError(f"rescale must be one of {list(divisors)}, got {rescale!r}")
        if not tol > 0:
            raise ValueError(f"tol must be > 0, got {tol}")
        if max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {max_iter}")
        self.c = float(c)
        self.tol = float(tol)
        self.max_iter = int(max_iter)
        self.rescale = rescale
        self._divisor = divisors[rescale]

    def backward(self, losses: Mapping[str, torch.Tensor], shared_parameters: Iterable[torch.nn.Parameter],
                 manual_backward: Callable[[torch.Tensor], None]) -> None:
        got = self._task_gradients(losses, shared_parameters, manual_backward)
        if got is None:
            return
        tg, params = got
        self._backward_coefficients(losses, tg, params, self.coefficients(tg.gram()), manual_backward)

    def coefficients(self, gram: torch.Tensor) -> torch.Tensor:
        """CAGrad on a Gram matrix ``M = G G^T [K, K]``: ``coef [K]`` with update ``coef^T G``."""
        m = gram.detach().double().cpu()
        k = m.shape[0]
        uniform = torch.full((k,), 1.0 / k, dtype=m.dtype)
        scale = m.diagonal().mean()
        if self.c == 0 or scale <= 0:
            return uniform / self._divisor
        m = m / scale
        g_dot_g0 = m.mean(1)                                                  # (K,) g_i . g_0
        sqrt_phi = self.c * g_dot_g0.mean().clamp_min(0).sqrt()               # c |g_0|
        eps = 1e-12

        def dual(w: torch.Tensor) -> torch.Tensor:
            return w @ g_dot_g0 + sqrt_phi * (w @ m @ w + eps).sqrt()

        def derivatives(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            mw = m @ w
            norm = (w @ mw + eps).sqrt()                                      # |g_w|
            return (g_dot_g0 + sqrt_phi * mw / norm,
                    sqrt_phi * (m / norm - torch.outer(mw, mw) / norm ** 3))

        w = minimize_on_simplex(dual, k, max_iter=self.max_iter, tol=self.tol, name="cagrad",
                                derivatives=derivatives)
        lam = sqrt_phi / (w @ m @ w + eps).sqrt()
        return (uniform + lam * w) / self._divisor
