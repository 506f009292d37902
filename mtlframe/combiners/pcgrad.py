"""``pcgrad``: projecting conflicting gradients.

Yu, Kumar, Gupta, Levine, Hausman, Finn. "Gradient Surgery for Multi-Task Learning."
NeurIPS 2020.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Literal

import torch

from mtlframe.combiners._grad import GradientCombiner


class PCGrad(GradientCombiner):
    """Remove, from each task gradient, its component along every gradient it conflicts with.

    For each task ``i``, in a random order of the other tasks ``j``:

    .. math:: g_i \\leftarrow g_i - \\frac{g_i \\cdot g_j}{\\lVert g_j \\rVert^2} g_j
              \\quad \\text{if } g_i \\cdot g_j < 0

    (``g_j`` the *original* gradients, ``g_i`` the running projected one), and the shared
    parameters get ``sum_i g_i`` (or the mean). Example: ``g_1 = (1, 0)``, ``g_2 = (-1, 1)`` give
    ``g_1' = (0.5, 0.5)``, ``g_2' = (0, 1)``, update ``(0.5, 1.5)``.

    Each projected gradient stays a linear combination ``sum_j C_ij g_j`` of the originals, so the
    projections are done on the ``[K, K]`` Gram matrix and the update is ``c^T G`` with
    ``c = sum_i C_i``; :meth:`current_weights` reports ``c``. Task-specific parameters get their
    own task's plain gradient. Gradients are taken on ``shared_parameters`` (encoders + the
    backbone's shared part) and averaged over processes before projecting (see
    :mod:`mtlframe.combiners._grad`), so multi-process training equals one process on the global
    batch. The random order comes from a generator seeded with ``seed + step``: identical on every
    process and reproducible after resuming.

    Args:
        reduction: ``"sum"`` (the paper) or ``"mean"`` of the projected gradients.
        seed: seed of the task-order generator.
        task_names, weights: injected; the recipe's task weights are not used (PCGrad treats
            tasks alike).

    Gradient accumulation: not supported (projections are per micro-batch).
    """

    def __init__(self, reduction: Literal["sum", "mean"] = "sum", seed: int = 0, *,
                 task_names: list[str], weights: dict[str, float] | None = None) -> None:
        super().__init__(task_names, weights)
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        self.reduction = reduction
        self.seed = int(seed)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def backward(self, losses: Mapping[str, torch.Tensor], shared_parameters: Iterable[torch.nn.Parameter],
                 manual_backward: Callable[[torch.Tensor], None]) -> None:
        got = self._task_gradients(losses, shared_parameters, manual_backward)
        if got is None:
            return
        tg, params = got
        coef = self.coefficients(tg.gram())
        self.step += 1
        self._backward_coefficients(losses, tg, params, coef, manual_backward)

    def coefficients(self, gram: torch.Tensor) -> torch.Tensor:
        """PCGrad on a Gram matrix ``M = G G^T [K, K]``: ``c [K]`` with update ``c^T G``."""
        m = gram.detach().double().cpu()
        k = m.shape[0]
        gen = torch.Generator().manual_seed(self.seed + int(self.step))
        proj = torch.eye(k, dtype=m.dtype)                                    # rows: g_i' in basis g
        for i in range(k):
            for j in torch.randperm(k, generator=gen).tolist():
                if j == i or m[j, j] <= 0:
                    continue
                dot = proj[i] @ m[:, j]                                       # g_i' . g_j
                if dot < 0:
                    proj[i, j] -= dot / m[j, j]
        coef = proj.sum(0)
        return coef / k if self.reduction == "mean" else coef
