"""``cross-stitch``: one network column per task, linearly mixed after every layer.

Misra, Shrivastava, Gupta, Hebert. "Cross-stitch Networks for Multi-task Learning." CVPR 2016.
"""
from __future__ import annotations

import torch
from torch import nn

from mtlframe.backbones.base import Backbone
from mtlframe.layers import MLP


class CrossStitch(Backbone):
    """``T`` MLP columns (one per task) whose activations a cross-stitch unit mixes after each layer.

    Layer ``l`` applies each task's own block ``f_t^l`` (``Linear -> [BatchNorm] -> activation ->
    [Dropout]``) and then the learnable ``T x T`` unit ``A^l``:

    .. math::
        \\tilde h_t^{l} = f_t^{l}(h_t^{l-1}), \\qquad
        h_t^{l} = \\sum_{s=1}^{T} A^{l}_{ts} \\, \\tilde h_s^{l}, \\qquad h_t^{0} = x

    ``A^l`` starts near the identity: off-diagonal entries ``alpha_off``, diagonal
    ``1 - (T - 1) * alpha_off`` (rows sum to 1; the paper's ``(0.9, 0.1)`` for two tasks).
    With ``alpha_off = 0`` and frozen units the columns are independent single-task networks.

    Args:
        hidden: widths of the layers of every column; the last is ``H``.
        alpha_off: initial off-diagonal value of every unit, ``0 <= alpha_off <= 1 / (T - 1)``.
        dropout: dropout after each layer.
        activation: activation name.
        batch_norm: batch normalization in each layer.
        input_dim, task_names: injected.

    Shape: ``x [B, D] -> {task: [B, H]}``; ``stitch[l]`` is a ``[T, T]`` parameter (rows: the
    receiving task, columns: the sending task, both in ``task_names`` order).

    Raises:
        ValueError: empty ``hidden`` or ``alpha_off`` outside ``[0, 1 / (T - 1)]``.

    Example::

        cs = CrossStitch(hidden=[64, 32], alpha_off=0.1, input_dim=32, task_names=["ctr", "cvr"])
        out = cs(torch.randn(8, 32))  # {"ctr": [8, 32], "cvr": [8, 32]}
    """

    def __init__(self, hidden: list[int] = [64, 32], alpha_off: float = 0.1, dropout: float = 0.0,  # noqa: B006
                 activation: str = "relu", batch_norm: bool = False, *, input_dim: int,
                 task_names: list[str]) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("hidden must list at least one width")
        self.task_names = list(task_names)
        n = len(self.task_names)
        if alpha_off < 0 or (n > 1 and alpha_off * (n - 1) > 1):
            raise ValueError(f"alpha_off must be in [0, 1/(T-1)] = [0, {1 / max(n - 1, 1):g}] for "
                             f"T={n} tasks (the diagonal is 1 - (T-1)*alpha_off), got {alpha_off}")
        widths = [input_dim, *hidden]
        # columns[l][t]: task t's block of layer l, (B, widths[l]) -> (B, widths[l+1])
        self.columns = nn.ModuleList(
            nn.ModuleDict({t: MLP(widths[l], [widths[l + 1]], dropout, activation, batch_norm)
                           for t in self.task_names})
            for l in range(len(hidden)))
        init = torch.full((n, n), float(alpha_off))
        init.fill_diagonal_(1.0 - alpha_off * (n - 1))
        self.stitch = nn.ParameterList(nn.Parameter(init.clone()) for _ in hidden)
        self.output_dims = {t: hidden[-1] for t in self.task_names}

    # shared_parameters(): the default, every parameter. Once any off-diagonal unit entry is
    # non-zero, each column's output reaches every task through the units after it, so columns
    # are shared in the sense gradient-level combiners need, not only the units.

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        hs = [x for _ in self.task_names]                          # T x (B, D)
        for blocks, unit in zip(self.columns, self.stitch):
            h = torch.stack([blocks[t](hs[i]) for i, t in enumerate(self.task_names)], dim=1)  # (B, T, H_l)
            h = torch.einsum("ts,bsh->bth", unit, h)               # (B, T, H_l)
            hs = list(h.unbind(dim=1))                             # T x (B, H_l)
        return dict(zip(self.task_names, hs))
