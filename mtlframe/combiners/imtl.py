"""``imtl``: impartial multi-task learning (IMTL-G, optionally with IMTL-L).

Liu, Li, Kuang, Xue, Chen, Yang, Liao, Zhang. "Towards Impartial Multi-task Learning."
ICLR 2021.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from mtlframe.combiners._grad import GradientCombiner, task_gradients


def imtl_g_weights(gram: torch.Tensor) -> torch.Tensor:
    """IMTL-G closed form on a Gram matrix ``M = G G^T [K, K]``.

    With ``u_i = g_i / |g_i|``, ``D = [g_1 - g_2; ...; g_1 - g_K]`` and
    ``U = [u_1 - u_2; ...; u_1 - u_K]``:

    .. math:: \\alpha_{2:K} = g_1 U^T (D U^T)^{-1}, \\qquad \\alpha_1 = 1 - \\sum_{i \\ge 2} \\alpha_i

    so that ``g = sum_i alpha_i g_i`` has the same projection on every ``u_i``. All inner products
    are read from ``M``; a singular ``D U^T`` (e.g. a zero gradient) is handled by the
    pseudo-inverse. Example: orthogonal gradients of norms 1 and 2 give ``alpha = (2/3, 1/3)``.

    Returns:
        ``alpha [K]`` (float64, sums to 1; entries may be negative).
    """
    m = gram.detach().double().cpu()
    k = m.shape[0]
    if k == 1:
        return torch.ones(1, dtype=m.dtype)
    inv_n = 1.0 / m.diagonal().clamp_min(0).sqrt().clamp_min(1e-20)           # (K,)
    gu = m * inv_n[None, :]                                                   # gu[i, j] = g_i . u_j
    # (D U^T)[i, j] = (g_1 - g_i) . (u_1 - u_j), i, j >= 2; b_j = g_1 . (u_1 - u_j)
    gu_1 = gu[0:1, :] - gu[1:, :]                                             # (K-1, K) rows g_1 - g_i
    a = gu_1[:, 0:1] - gu_1[:, 1:]                                            # (K-1, K-1)
    b = gu[0, 0] - gu[0, 1:]                                                  # (K-1,)
    rest = torch.linalg.pinv(a.T) @ b                                         # alpha A = b
    return torch.cat([(1 - rest.sum()).reshape(1), rest])


class IMTL(GradientCombiner):
    """Weights whose combined gradient has equal projections on every task's gradient direction.

    **IMTL-G** (gradient balance): ``alpha`` from :func:`imtl_g_weights` on the Gram matrix of the
    task gradients on ``shared_parameters`` (encoders + the backbone's shared part), averaged over
    processes; the step backpropagates ``sum_t alpha_t L_t`` with ``alpha`` detached, so
    task-specific parameters get their task's gradient scaled by the same weight and DDP syncs as
    usual.

    **IMTL-L** (loss balance, ``loss_scaling=True``): each loss is replaced by
    ``e^{s_t} L_t - s_t`` with a learnable ``s_t`` (initialized to 0). The model sees
    ``e^{s_t} L_t``; ``s_t`` gets the gradient ``e^{s_t} L_t - 1`` (it drives ``e^{s_t} L_t``
    to 1, making scaled losses comparable) and is stepped by the model's optimizer — the module
    must optimize the combiner's parameters. IMTL-G then runs on the scaled gradients
    ``e^{s_t} g_t`` (the paper's full IMTL). The applied loss weights are ``alpha_t e^{s_t}``.

    The paper computes IMTL-G on the gradients of the shared *representation* for speed; here they
    are taken on the shared parameters (exact, costlier with big embedding tables).

    Args:
        loss_scaling: add IMTL-L.
        task_names, weights: injected; the recipe's task weights are not used.

    Gradient accumulation: not supported (weights are per micro-batch).
    """

    def __init__(self, loss_scaling: bool = False, *, task_names: list[str],
                 weights: dict[str, float] | None = None) -> None:
        super().__init__(task_names, weights)
        self.loss_scaling = bool(loss_scaling)
        self.log_scales = nn.Parameter(torch.zeros(len(self.task_names))) if self.loss_scaling else None

    def backward(self, losses: Mapping[str, torch.Tensor], shared_parameters: Iterable[torch.nn.Parameter],
                 manual_backward: Callable[[torch.Tensor], None]) -> None:
        _, params = self._prepare(losses, shared_parameters)
        scale = self._scales()
        extra = None
        if self.log_scales is not None:
            s = {t: self.log_scales[i] for i, t in enumerate(self.task_names)}
            extra = sum(torch.exp(s[t]) * loss.detach() - s[t] for t, loss in losses.items())
        if self._is_single_task(losses):
            alpha = {t: 1.0 for t in losses}
        else:
            tg = task_gradients(losses, self.task_names, params)
            sc = torch.tensor([scale[t] for t in tg.tasks], dtype=torch.float64)
            a = imtl_g_weights(tg.gram() * torch.outer(sc, sc))
            alpha = dict(zip(tg.tasks, a.tolist()))
        self._backward_weighted(losses, {t: alpha[t] * scale[t] for t in alpha}, manual_backward, extra)

    def _scales(self) -> dict[str, float]:
        if self.log_scales is None:
            return {t: 1.0 for t in self.task_names}
        return dict(zip(self.task_names, self.log_scales.detach().exp().tolist()))
