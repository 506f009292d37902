"""``stem``: Shared and Task-specific EMbeddings with All-Forward gates (STEM-Net).

Su, Wang, Zhao, Yin, Zhang, Zhang, et al. "STEM: Unleashing the Power of Embeddings for
Multi-task Recommendation." AAAI 2024.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
from torch import nn

from mtlframe.backbones.base import Backbone
from mtlframe.layers import ExtractionLayer


class STEM(Backbone):
    """Per-task and shared embeddings, their own experts, and All-Forward gates with stop-gradient.

    STEM gives each task ``t`` its own embedding ``e_t`` and keeps a shared one ``e_s``; task
    experts read ``e_t``, shared experts read ``e_s``. Task ``t``'s gate (reading ``e_t``) mixes
    *all* experts, but through a stop-gradient on the other tasks' experts, so another task's
    knowledge flows forward while only task ``t`` (and the shared part) is trained by task ``t``:

    .. math::
        h_t = g_t(e_t)^\\top \\big[\\mathrm{sg}(E_1(e_1)); \\dots; E_t(e_t); \\dots;
              \\mathrm{sg}(E_T(e_T)); E_s(e_s)\\big]

    **Simplification.** In the paper ``e_t`` and ``e_s`` are separate embedding *tables*, so the
    tasks' gradients never meet in an embedding row. A backbone only sees the encoders' shared
    ``x``; here ``e_t = W_t x + b_t`` and ``e_s = W_s x + b_s`` are per-task and shared linear
    projections of it. The experts above the embeddings are isolated as in the paper, but the
    encoders' tables still receive every task's gradient (through ``W_t``), which is the very
    conflict STEM's separate tables remove. Faithful STEM needs encoders that emit per-task
    embeddings (see the report accompanying this backbone / the project docs).

    Args:
        num_shared_experts: shared experts ``m_s`` (>= 0).
        num_task_experts: experts per task ``m_t`` (>= 0; ``m_t + m_s >= 1``).
        expert_hidden: widths of each expert MLP; the last is ``H``.
        embedding_dim: width of each task's and the shared embedding projection (>= 1).
        dropout: dropout inside experts.
        activation: activation name.
        batch_norm: batch normalization inside experts.
        input_dim, task_names: injected.

    Shape: ``x [B, D] -> {task: [B, H]}``; after a forward, ``gate_weights[task]`` is
    ``[B, T*m_t + m_s]`` (task experts in ``task_names`` order, then shared experts).

    Raises:
        ValueError: ``embedding_dim < 1``, negative expert counts, no expert, empty ``expert_hidden``.

    Example::

        stem = STEM(num_shared_experts=1, num_task_experts=1, expert_hidden=[64],
                    input_dim=32, task_names=["ctr", "cvr"])
        out = stem(torch.randn(8, 32))  # {"ctr": [8, 64], "cvr": [8, 64]}
    """

    def __init__(self, num_shared_experts: int = 1, num_task_experts: int = 1,
                 expert_hidden: list[int] = [64], embedding_dim: int = 32, dropout: float = 0.0,  # noqa: B006
                 activation: str = "relu", batch_norm: bool = False, *, input_dim: int,
                 task_names: list[str]) -> None:
        super().__init__()
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
        self.task_names = list(task_names)
        self.task_embeddings = nn.ModuleDict({t: nn.Linear(input_dim, embedding_dim) for t in self.task_names})
        self.shared_embedding = nn.Linear(input_dim, embedding_dim)
        self.layer = ExtractionLayer(embedding_dim, self.task_names, num_task_experts, num_shared_experts,
                                     expert_hidden, dropout, activation, batch_norm, all_forward=True)
        self.output_dims = {t: self.layer.output_dim for t in self.task_names}

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return itertools.chain(self.shared_embedding.parameters(), self.layer.shared_experts.parameters())

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        e = {t: self.task_embeddings[t](x) for t in self.task_names}  # {task: (B, d)}
        e_s = self.shared_embedding(x)                             # (B, d)
        out = self.layer(e, e_s)                                   # {task: (B, H)}
        for t, w in out.task_gates.items():
            self.gate_weights[t] = w.detach()                      # (B, T*m_t + m_s)
        return out.tasks
