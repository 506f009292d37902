"""``mmoe``: Multi-gate Mixture-of-Experts.

Ma, Zhao, Yi, Chen, Hong, Chi. "Modeling Task Relationships in Multi-task Learning with
Multi-gate Mixture-of-Experts." KDD 2018.
"""
from __future__ import annotations

import torch
from torch import nn

from mtlframe.backbones.base import Backbone
from mtlframe.layers import ExpertBank, Gate, gated_mixtures, mix_experts


class MMoE(Backbone):
    """``E`` shared expert MLPs, one softmax gate per task.

    .. math:: h_t = \\sum_{e=1}^{E} g_t(x)_e \\, f_e(x), \\quad g_t(x) = \\mathrm{softmax}(W_t x)

    Args:
        num_experts: number of experts ``E``.
        expert_hidden: widths of each expert MLP; the last is ``H``.
        dropout: dropout inside experts.
        activation: activation name.
        batch_norm: batch normalization inside experts.
        input_dim, task_names: injected.

    Shape: ``x [B, D] -> {task: [B, H]}``; after a forward, ``gate_weights[task]`` is ``[B, E]``.

    Example::

        mmoe = MMoE(num_experts=4, expert_hidden=[64], input_dim=32, task_names=["ctr", "cvr"])
        out = mmoe(torch.randn(8, 32))  # {"ctr": [8, 64], "cvr": [8, 64]}
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
        self.gates = nn.ModuleDict({t: Gate(input_dim, num_experts) for t in self.task_names})
        self.output_dims = {t: expert_hidden[-1] for t in self.task_names}

    def shared_parameters(self):
        return self.experts.parameters()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        experts = self.experts(x)                                  # (B, E, H)
        gates = [self.gates[t] for t in self.task_names]
        if all(type(g) is Gate for g in gates):                   # softmax gates: all tasks at once
            w, h = gated_mixtures(gates, x, experts)               # (B, T, E), (B, T, H)
            for i, t in enumerate(self.task_names):
                self.gate_weights[t] = w[:, i].detach()
            return {t: h[:, i] for i, t in enumerate(self.task_names)}
        out = {}
        for t, gate in zip(self.task_names, gates):               # other gates (DSelect-K): one by one
            w = gate(x)                                            # (B, E)
            self.gate_weights[t] = w.detach()
            out[t] = mix_experts(w, experts)                       # (B, H)
        return out
