"""``ple``: Progressive Layered Extraction.

Tang, Liu, Zhao, Gong. "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning (MTL)
Model for Personalized Recommendations." RecSys 2020 (Section 4.3).
"""
from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
from torch import nn

from mtlframe.backbones.base import Backbone
from mtlframe.layers import ExtractionLayer


class PLE(Backbone):
    """``L`` stacked extraction networks (CGC layers) that separate task and shared experts level by level.

    Level ``l`` reads, per task, the previous level's task output ``h_t^{l-1}`` and, for the
    shared experts, the previous shared output ``h_s^{l-1}`` (level 1 reads ``x`` everywhere):

    .. math::
        h_t^{l} = g_t^{l}(h_t^{l-1})^\\top [E_t^{l}(h_t^{l-1}); E_s^{l}(h_s^{l-1})], \\qquad
        h_s^{l} = g_s^{l}(h_s^{l-1})^\\top [E_1^{l}; \\dots; E_T^{l}; E_s^{l}]

    The shared gate ``g_s^l`` (mixing *all* experts) exists in levels ``1..L-1``; the last level
    is a CGC layer whose task outputs are the backbone's outputs. ``num_levels=1`` is CGC.

    Args:
        num_shared_experts: shared experts per level ``m_s`` (>= 0).
        num_task_experts: experts per task per level ``m_t`` (>= 0; ``m_t + m_s >= 1``).
        expert_hidden: widths of each expert MLP (every level); the last is ``H``.
        num_levels: extraction levels ``L`` (>= 1).
        dropout: dropout inside experts.
        activation: activation name.
        batch_norm: batch normalization inside experts.
        input_dim, task_names: injected.

    Shape: ``x [B, D] -> {task: [B, H]}``. After a forward, ``gate_weights`` holds
    ``"level{l}/{task}"`` (``[B, m_t + m_s]``, own experts then shared) for every level and
    ``"level{l}/shared"`` (``[B, T*m_t + m_s]``, tasks in order, then shared) for ``l < L``.

    Raises:
        ValueError: ``num_levels < 1``, negative expert counts, no expert, empty ``expert_hidden``.

    Example::

        ple = PLE(num_shared_experts=2, num_task_experts=1, expert_hidden=[64], num_levels=2,
                  input_dim=32, task_names=["ctr", "cvr"])
        out = ple(torch.randn(8, 32))  # {"ctr": [8, 64], "cvr": [8, 64]}
    """

    def __init__(self, num_shared_experts: int = 2, num_task_experts: int = 1,
                 expert_hidden: list[int] = [64], num_levels: int = 2, dropout: float = 0.0,  # noqa: B006
                 activation: str = "relu", batch_norm: bool = False, *, input_dim: int,
                 task_names: list[str]) -> None:
        super().__init__()
        if num_levels < 1:
            raise ValueError(f"num_levels must be >= 1, got {num_levels}")
        if not expert_hidden:
            raise ValueError("expert_hidden must list at least one width")
        self.task_names = list(task_names)
        widths = [input_dim] + [expert_hidden[-1]] * (num_levels - 1)
        self.levels = nn.ModuleList(
            ExtractionLayer(w, self.task_names, num_task_experts, num_shared_experts, expert_hidden,
                            dropout, activation, batch_norm, shared_output=(i < num_levels - 1))
            for i, w in enumerate(widths))
        self.output_dims = {t: expert_hidden[-1] for t in self.task_names}

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter whose output reaches more than one task.

        That is the shared experts and shared gates of every level; the task experts of levels
        ``1..L-1`` (they feed that level's shared gate, whose output every task reads at the next
        level); and the task gates of levels ``1..L-2`` (their output feeds the task's experts at
        the next level, which feed a shared gate again). The task gates of levels ``L-1`` and
        ``L`` and the task experts of level ``L`` serve one task only.
        """
        num = len(self.levels)
        parts = []
        for i, level in enumerate(self.levels, start=1):
            parts.append(level.shared_experts.parameters())
            if level.shared_gate is not None:
                parts.append(level.shared_gate.parameters())
            if i <= num - 1:
                parts.append(level.task_experts.parameters())
            if i <= num - 2:
                parts.append(level.task_gates.parameters())
        return itertools.chain(*parts)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        task_in = {t: x for t in self.task_names}                  # {task: (B, D)}
        shared_in = x                                              # (B, D)
        for l, level in enumerate(self.levels, start=1):
            out = level(task_in, shared_in)
            for t, w in out.task_gates.items():
                self.gate_weights[f"level{l}/{t}"] = w.detach()    # (B, m_t + m_s)
            if out.shared_gate is not None:
                self.gate_weights[f"level{l}/shared"] = out.shared_gate.detach()  # (B, T*m_t + m_s)
            task_in, shared_in = out.tasks, out.shared             # {task: (B, H)}, (B, H) | None
        return task_in
