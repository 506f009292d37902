"""``mlp``: a task tower, an MLP ending in the task's output layer."""
from __future__ import annotations

import torch

from mtlframe.layers import MLP
from mtlframe.towers.base import Tower


class MLPTower(Tower):
    """``[B, H_t] -> MLP(hidden) -> Linear -> [B, output_dim]``.

    Args:
        hidden: hidden widths (``[]`` = a linear head).
        dropout: dropout after each hidden layer.
        activation: activation name.
        input_dim, output_dim: injected.
    """

    def __init__(self, hidden: list[int] = [32], dropout: float = 0.0, activation: str = "relu",  # noqa: B006
                 *, input_dim: int, output_dim: int) -> None:
        super().__init__()
        self.net = MLP(input_dim, hidden, dropout, activation, output_dim=output_dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)                                         # (B, output_dim)
