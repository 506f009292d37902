"""``single-task``: one independent MLP per task, the no-sharing baseline.

The reference point for "MTL gain": a multi-task model helps task ``t`` only if it beats this
backbone (same towers, same encoders) on ``t``. Caruana, "Multitask Learning", 1997, compares
against exactly such single-task networks.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from mtlframe.backbones.base import Backbone
from mtlframe.layers import MLP


class SingleTask(Backbone):
    """``h_t = MLP_t(x)``: no parameter of the backbone is used by two tasks.

    Only the encoders (the feature embeddings) remain shared, as in every backbone; give each
    task its own run with one task in the recipe to remove that sharing too.

    Matching a parameter budget: an MLP with widths ``D -> h_1 -> ... -> h_n`` has
    ``sum_i (h_{i-1} + 1) * h_i`` weights, so this backbone has ``T`` times that. To compare with
    an MTL backbone of ``P`` parameters at equal size, choose ``hidden`` so that ``T`` times the
    MLP's count is about ``P`` (e.g. for MMoE with ``E`` experts of widths ``hidden`` and ``T``
    gates, ``P = E * MLP(hidden) + T * (D + 1) * E``; ``T = E`` columns of the same widths are
    nearly the same size).

    Args:
        hidden: widths of each task's MLP; the last is ``H``.
        dropout: dropout after each hidden layer.
        activation: activation name.
        batch_norm: batch normalization in the MLPs.
        input_dim, task_names: injected.

    Shape: ``x [B, D] -> {task: [B, H]}``.

    Raises:
        ValueError: empty ``hidden``.

    Example::

        st = SingleTask(hidden=[64, 32], input_dim=32, task_names=["ctr", "cvr"])
        out = st(torch.randn(8, 32))  # {"ctr": [8, 32], "cvr": [8, 32]}
    """

    def __init__(self, hidden: list[int] = [128, 64], dropout: float = 0.0, activation: str = "relu",  # noqa: B006
                 batch_norm: bool = False, *, input_dim: int, task_names: list[str]) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("hidden must list at least one width")
        self.task_names = list(task_names)
        self.nets = nn.ModuleDict(
            {t: MLP(input_dim, hidden, dropout, activation, batch_norm) for t in self.task_names})
        self.output_dims = {t: hidden[-1] for t in self.task_names}

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return iter(())

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {t: self.nets[t](x) for t in self.task_names}      # {task: (B, H)}
