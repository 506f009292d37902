"""``omoe``: One-gate Mixture-of-Experts, the single-gate baseline of MMoE.

Ma, Zhao, Yi, Chen, Hong, Chi. "Modeling Task Relationships in Multi-task Learning with
Multi-gate Mixture-of-Experts." KDD 2018 (Section 4, "OMoE").
"""
from __future__ import annotations

import torch

from mtlframe.backbones.base import Backbone
from mtlframe.layers import ExpertBank, Gate, mix_experts


class OMoE(Backbone):
    """``E`` expert MLPs mixed by *one* softmax gate shared by every task.

    .. math:: h_t = h = \\sum_{e=1}^{E} g(x)_e \\, f_e(x), \\quad g(x) = \\mathrm{softmax}(W x)

    Every task gets the same representation; compare with :class:`~mtlframe.backbones.mmoe.MMoE`
    (one gate per task) to measure what per-task gating buys.

    Args:
        num_experts: number of experts ``E``.
        expert_hidden: widths of each expert MLP; the last is ``H``.
        dropout: dropout inside experts.
        activation: activation name.
        batch_norm: batch normalization inside experts.
        input_dim, task_names: injected.

    Shape: ``x [B, D] -> {task: [B, H]}``; after a forward, ``gate_weights["shared"]`` is ``[B, E]``.

    Raises:
        ValueError: ``num_experts < 1`` or empty ``expert_hidden``.

    Example::

        omoe = OMoE(num_experts=4, expert_hidden=[64], input_dim=32, task_names=["ctr", "cvr"])
        out = omoe(torch.randn(8, 32))  # {"ctr": [8, 64], "cvr": [8, 64]}, the same tensor
    """

    def __init__(self, num_experts: int = 4, expert_hidden: list[int] = [64], dropout: float = 0.0,  # noqa: B006
                 activation: str = "relu", batch_norm: bool = False, *, input_dim: int,
                 task_names: list[str]) -> None:
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        if not expert_hidden:
            raise ValueError("expert_hidden must list at least one width")
        self.task_names = list(task_names)
        self.experts = ExpertBank(num_experts, input_dim, expert_hidden, dropout, activation, batch_norm)
        self.gate = Gate(input_dim, num_experts)
        self.output_dims = {t: expert_hidden[-1] for t in self.task_names}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        experts = self.experts(x)                                  # (B, E, H)
        w = self.gate(x)                                           # (B, E)
        self.gate_weights["shared"] = w.detach()
        h = mix_experts(w, experts)                                # (B, H)
        return {t: h for t in self.task_names}
