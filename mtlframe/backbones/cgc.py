"""``cgc``: Customized Gate Control, one extraction layer of PLE.

Tang, Liu, Zhao, Gong. "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning (MTL)
Model for Personalized Recommendations." RecSys 2020 (Section 4.2).
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from mtlframe.backbones.base import Backbone
from mtlframe.layers import ExtractionLayer


class CGC(Backbone):
    """Task-specific experts plus shared experts; each task's gate mixes its own and the shared ones.

    .. math::
        h_t = \\sum_{e=1}^{m_t + m_s} g_t(x)_e \\, S_t(x)_e, \\quad
        S_t(x) = [E_{t,1}(x), \\dots, E_{t,m_t}(x), E_{s,1}(x), \\dots, E_{s,m_s}(x)],
        \\quad g_t(x) = \\mathrm{softmax}(W_t x)

    Task ``t``'s experts are trained by task ``t`` only; the shared experts by every task.
    The building block is :class:`mtlframe.layers.ExtractionLayer` (shared with ``ple`` and ``stem``).

    Args:
        num_shared_experts: shared experts ``m_s`` (>= 0).
        num_task_experts: experts per task ``m_t`` (>= 0; ``m_t + m_s >= 1``).
        expert_hidden: widths of each expert MLP; the last is ``H``.
        dropout: dropout inside experts.
        activation: activation name.
        batch_norm: batch normalization inside experts.
        input_dim, task_names: injected.

    Shape: ``x [B, D] -> {task: [B, H]}``; after a forward, ``gate_weights[task]`` is
    ``[B, m_t + m_s]`` (columns: the task's own experts, then the shared experts).

    Raises:
        ValueError: negative expert counts, no expert at all, or empty ``expert_hidden``.

    Example::

        cgc = CGC(num_shared_experts=2, num_task_experts=1, expert_hidden=[64],
                  input_dim=32, task_names=["ctr", "cvr"])
        out = cgc(torch.randn(8, 32))  # {"ctr": [8, 64], "cvr": [8, 64]}
    """

    def __init__(self, num_shared_experts: int = 2, num_task_experts: int = 1,
                 expert_hidden: list[int] = [64], dropout: float = 0.0, activation: str = "relu",  # noqa: B006
                 batch_norm: bool = False, *, input_dim: int, task_names: list[str]) -> None:
        super().__init__()
        self.task_names = list(task_names)
        self.layer = ExtractionLayer(input_dim, self.task_names, num_task_experts, num_shared_experts,
                                     expert_hidden, dropout, activation, batch_norm)
        self.output_dims = {t: self.layer.output_dim for t in self.task_names}

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return self.layer.shared_experts.parameters()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.layer({t: x for t in self.task_names}, x)       # {task: (B, H)}
        for t, w in out.task_gates.items():
            self.gate_weights[t] = w.detach()                      # (B, m_t + m_s)
        return out.tasks
