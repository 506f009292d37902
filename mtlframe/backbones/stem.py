"""``stem``: Shared and Task-specific EMbeddings with All-Forward gates (STEM-Net).

Su, Wang, Zhao, Yin, Zhang, Zhang, et al. "STEM: Unleashing the Power of Embeddings for
Multi-task Recommendation." AAAI 2024.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from mtlframe.backbones.base import Backbone
from mtlframe.layers import ExtractionLayer

_DEFAULT_EMBEDDING_DIM = 32


class STEM(Backbone):
    """Per-task and shared embeddings, their own experts, and All-Forward gates with stop-gradient.

    STEM gives each task ``t`` its own embedding ``e_t`` and keeps a shared one ``e_s``; task
    experts read ``e_t``, shared experts read ``e_s``. Task ``t``'s gate (reading ``e_t``) mixes
    *all* experts, but through a stop-gradient on the other tasks' experts, so another task's
    knowledge flows forward while only task ``t`` (and the shared part) is trained by task ``t``:

    .. math::
        h_t = g_t(e_t)^\\top \\big[\\mathrm{sg}(E_1(e_1)); \\dots; E_t(e_t); \\dots;
              \\mathrm{sg}(E_T(e_T)); E_s(e_s)\\big]

    Two modes, chosen by the recipe's encoders:

    * **Per-task embedding tables (the paper).** With ``task_specific: true`` on an ``embedding``
      encoder (``{name: embedding, features: [...], dim: 16, task_specific: true}``), each task
      has its own embedding tables beside the shared ones. ``e_t`` is task ``t``'s input (its own
      embeddings, concatenated with the shared encoders' outputs: numeric, bag-of-words, text,
      ...) and ``e_s`` the shared input ``x``, both ``[B, D]``; no projection. Task ``t``'s loss
      then reaches only its own tables and the shared ones: tasks' gradients never meet in a
      task table row. A task the encoder does not list (``task_specific: [a, b]``) reads the
      shared tables in its ``e_t``. ``embedding_dim`` must be left unset (the width is the
      encoders').
    * **Projection fallback** (no per-task tables in the recipe): ``e_t = W_t x + b_t`` and
      ``e_s = W_s x + b_s`` are per-task and shared linear projections of the shared ``x``, of
      width ``embedding_dim`` (default 32). The experts above the embeddings are isolated as in
      the paper, but the encoders' tables receive every task's gradient (through ``W_t``), the
      conflict that STEM's separate tables remove.

    :meth:`shared_parameters` are the shared experts (and the shared projection ``W_s``); the
    task tables are left out of the encoder's shared parameters too, so gradient-level combiners
    balance only what the tasks really share.

    Args:
        num_shared_experts: shared experts ``m_s`` (>= 0).
        num_task_experts: experts per task ``m_t`` (>= 0; ``m_t + m_s >= 1``).
        expert_hidden: widths of each expert MLP; the last is ``H``.
        embedding_dim: width of each task's and the shared embedding projection (>= 1; projection
            fallback only, default 32).
        dropout: dropout inside experts.
        activation: activation name.
        batch_norm: batch normalization inside experts.
        input_dim, task_names: injected.
        task_inputs: injected; True when the encoders give per-task inputs (per-task tables).

    Shape: projection fallback ``x [B, D] -> {task: [B, H]}``; per-task tables
    ``(x [B, D], {task: [B, D]}) -> {task: [B, H]}``. After a forward, ``gate_weights[task]`` is
    ``[B, T*m_t + m_s]`` (task experts in ``task_names`` order, then shared experts).

    Raises:
        ValueError: ``embedding_dim < 1``, or set with per-task tables; negative expert counts, no
            expert, empty ``expert_hidden``; ``forward`` without the per-task inputs the backbone
            was built for (or with them when it was built without).

    Example::

        stem = STEM(num_shared_experts=1, num_task_experts=1, expert_hidden=[64],
                    input_dim=32, task_names=["ctr", "cvr"])
        out = stem(torch.randn(8, 32))  # {"ctr": [8, 64], "cvr": [8, 64]}
        faithful = STEM(expert_hidden=[64], input_dim=32, task_names=["ctr", "cvr"], task_inputs=True)
        out = faithful(x, {"ctr": e_ctr, "cvr": e_cvr})  # x, e_ctr, e_cvr: [8, 32]
    """

    injected = ("input_dim", "task_names", "task_inputs")
    accepts_task_inputs = True

    def __init__(self, num_shared_experts: int = 1, num_task_experts: int = 1,
                 expert_hidden: list[int] = [64], embedding_dim: int | None = None,  # noqa: B006
                 dropout: float = 0.0, activation: str = "relu", batch_norm: bool = False, *,
                 input_dim: int, task_names: list[str], task_inputs: bool = False) -> None:
        super().__init__()
        if task_inputs and embedding_dim is not None:
            raise ValueError("embedding_dim sets the width of the projections used without per-task embedding "
                             "tables; with task_specific tables the embeddings are the encoders' (their dim): "
                             "remove embedding_dim")
        if embedding_dim is not None and embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
        self.task_names = list(task_names)
        self.task_inputs = bool(task_inputs)
        width = input_dim
        if not self.task_inputs:
            width = embedding_dim or _DEFAULT_EMBEDDING_DIM
            self.task_embeddings = nn.ModuleDict({t: nn.Linear(input_dim, width) for t in self.task_names})
            self.shared_embedding = nn.Linear(input_dim, width)
        self.layer = ExtractionLayer(width, self.task_names, num_task_experts, num_shared_experts,
                                     expert_hidden, dropout, activation, batch_norm, all_forward=True)
        self.output_dims = {t: self.layer.output_dim for t in self.task_names}

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        if self.task_inputs:
            return self.layer.shared_experts.parameters()
        return itertools.chain(self.shared_embedding.parameters(), self.layer.shared_experts.parameters())

    def forward(self, x: torch.Tensor,
                task_inputs: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        if self.task_inputs:
            if task_inputs is None:
                raise ValueError("this STEM was built for per-task embedding tables (task_inputs=True): call it "
                                 "with forward(x, {task: [B, D]})")
            e, e_s = task_inputs, x                                # {task: (B, D)}, (B, D)
        else:
            if task_inputs is not None:
                raise ValueError("this STEM was built without per-task inputs (projection fallback); build it with "
                                 "task_inputs=True to read them")
            e = {t: self.task_embeddings[t](x) for t in self.task_names}  # {task: (B, d)}
            e_s = self.shared_embedding(x)                         # (B, d)
        out = self.layer(e, e_s)                                   # {task: (B, H)}
        for t, w in out.task_gates.items():
            self.gate_weights[t] = w.detach()                      # (B, T*m_t + m_s)
        return out.tasks
