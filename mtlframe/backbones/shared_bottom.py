"""``shared-bottom``: one shared MLP feeding every task (Caruana, "Multitask Learning", 1997)."""
from __future__ import annotations

import torch

from mtlframe.backbones.base import Backbone
from mtlframe.layers import MLP


class SharedBottom(Backbone):
    """Hard parameter sharing: ``h_t = MLP(x)`` for every task ``t``.

    Args:
        hidden: widths of the shared MLP.
        dropout: dropout after each hidden layer.
        activation: activation name.
        batch_norm: batch normalization in the MLP.
        input_dim, task_names: injected.

    Shape: ``x [B, D] -> {task: [B, hidden[-1]]}``.
    """

    def __init__(self, hidden: list[int] = [128, 64], dropout: float = 0.0, activation: str = "relu",  # noqa: B006
                 batch_norm: bool = False, *, input_dim: int, task_names: list[str]) -> None:
        super().__init__()
        self.task_names = list(task_names)
        self.bottom = MLP(input_dim, hidden, dropout, activation, batch_norm)
        self.output_dims = {t: self.bottom.output_dim for t in self.task_names}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.bottom(x)                                         # (B, H)
        return {t: h for t in self.task_names}
