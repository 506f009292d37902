"""``aitm``: Adaptive Information Transfer Multi-task framework for multi-step conversions.

Xi, Chen, Lin, Zhu, Yang, Zhang, Hu, Liu. "Modeling the Sequential Dependence among Audience
Multi-step Conversions with Multi-task Learning in Targeted Display Advertising." KDD 2021.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from mtlframe.backbones.base import AuxLoss
from mtlframe.backbones.funnel import FunnelBackbone
from mtlframe.layers import MLP


class InformationTransfer(nn.Module):
    """AIT: attention over the transferred vector ``p`` and the task's own vector ``q``.

    .. math::
        w_u = \\mathrm{softmax}_{u \\in \\{p, q\\}}
              \\frac{\\langle h_1(u), h_2(u) \\rangle}{\\sqrt{H}}, \\qquad
        z = \\sum_{u \\in \\{p, q\\}} w_u \\, h_3(u)

    Shape: ``p [B, H], q [B, H] -> (z [B, H], w [B, 2])`` (``w[:, 0]`` on ``p``, ``w[:, 1]`` on ``q``).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.h1 = nn.Linear(dim, dim, bias=False)
        self.h2 = nn.Linear(dim, dim, bias=False)
        self.h3 = nn.Linear(dim, dim, bias=False)
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, p: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u = torch.stack([p, q], dim=1)                             # (B, 2, H)
        scores = (self.h1(u) * self.h2(u)).sum(-1) * self.scale    # (B, 2)
        w = torch.softmax(scores, dim=-1)                          # (B, 2)
        z = (w.unsqueeze(-1) * self.h3(u)).sum(dim=1)              # (B, H)
        return z, w


class AITM(FunnelBackbone):
    """Per-step towers; each step receives what the previous step learned through an attention gate.

    For funnel steps ``t = 1..T`` (e.g. impression -> click -> purchase) over the shared input ``x``:

    .. math::
        q_t = \\mathrm{MLP}_t(x), \\quad z_1 = q_1, \\quad
        p_{t-1} = \\mathrm{ReLU}(W_t z_{t-1} + b_t), \\quad z_t = \\mathrm{AIT}_t(p_{t-1}, q_t)

    and ``h_t = z_t`` goes to task ``t``'s tower (the paper's per-task prediction layer; a linear
    tower, ``tower: {name: mlp, hidden: []}``, matches it). The behavioural expectation
    calibrator, :meth:`auxiliary_loss_sums`, penalises a later step predicted likelier than an
    earlier one (end-to-end conversion cannot exceed the click probability):

    .. math:: L_{BEC} = \\alpha \\, \\frac{1}{B} \\sum_{b} \\sum_{t \\ge 2} \\max(\\hat y_t - \\hat y_{t-1}, 0)

    over the ``B`` rows of the batch (under DDP, of the global batch).

    Args:
        tower_hidden: widths of each step's MLP ``MLP_t``; the last is ``H``.
        calibration_weight: ``alpha`` (>= 0).
        dropout: dropout in the MLPs.
        activation: activation name.
        batch_norm: batch normalization in the MLPs.
        click: the click stage's task (with ``conversion``: a two-stage funnel).
        conversion: the conversion stage's task; trained on click AND conversion.
        funnel: every stage's task in funnel order (instead of ``click``/``conversion``); stage
            ``k`` is trained on the AND of the labels of stages ``1..k``.
        strict: a row with a later stage 1 and an earlier one 0 is a data error (default: a
            warning with the count).
        input_dim, task_names, task_types: injected.

    Shape: ``x [B, D] -> {task: [B, H]}``; after a forward, ``gate_weights[task]`` for steps
    ``t >= 2`` is the AIT attention ``[B, 2]`` (transferred, own).

    Raises:
        ArgumentError: stages not named, an unknown task, a task left out, fewer than two stages,
            a stage that is not a binary task (:func:`~mtlframe.backbones.funnel.resolve_stages`).
        ValueError: empty ``tower_hidden``, ``calibration_weight < 0``; in :meth:`auxiliary_loss_sums`,
            a tower with more than one output.

    Example::

        aitm = AITM(tower_hidden=[64, 32], click="click", conversion="purchase", input_dim=32,
                    task_names=["click", "purchase"])
        h = aitm(torch.randn(8, 32))                       # {"click": [8, 32], "purchase": [8, 32]}
        logits = {t: towers[t](h[t]) for t in h}
        aux = aitm.auxiliary_loss(batch, logits)           # {"aitm/calibration": scalar}
    """

    def __init__(self, tower_hidden: list[int] = [128, 64], calibration_weight: float = 0.6,  # noqa: B006
                 dropout: float = 0.0, activation: str = "relu", batch_norm: bool = False,
                 click: str | None = None, conversion: str | None = None, funnel: list[str] | None = None,
                 strict: bool = False, *, input_dim: int, task_names: list[str],
                 task_types: dict[str, str] | None = None) -> None:
        super().__init__()
        if not tower_hidden:
            raise ValueError("tower_hidden must list at least one width")
        if calibration_weight < 0:
            raise ValueError(f"calibration_weight must be >= 0, got {calibration_weight}")
        self._init_funnel(click, conversion, funnel, strict, task_names, task_types)
        self.calibration_weight = float(calibration_weight)
        dim = tower_hidden[-1]
        self.towers = nn.ModuleDict(
            {t: MLP(input_dim, tower_hidden, dropout, activation, batch_norm) for t in self.task_names})
        # keyed by the receiving step
        self.transfers = nn.ModuleDict({t: MLP(dim, [dim], dropout, activation) for t in self.funnel[1:]})
        self.ait = nn.ModuleDict({t: InformationTransfer(dim) for t in self.funnel[1:]})
        self.output_dims = {t: dim for t in self.task_names}

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """Everything of steps ``1..T-1``: step ``k``'s ``z_k`` reaches every later task."""
        parts = []
        for k, t in enumerate(self.funnel[:-1]):
            parts.append(self.towers[t].parameters())
            if k > 0:
                parts += [self.transfers[t].parameters(), self.ait[t].parameters()]
        return itertools.chain(*parts)

    def gate_labels(self, name: str) -> list[str] | None:
        return ["transferred", "own"]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        z = None
        for t in self.funnel:
            q = self.towers[t](x)                                  # (B, H)
            if z is None:
                z = q
            else:
                p = self.transfers[t](z)                           # (B, H)  from step t-1
                z, w = self.ait[t](p, q)                           # (B, H), (B, 2)
                self.gate_weights[t] = w.detach()
            out[t] = z
        return {t: out[t] for t in self.task_names}

    def auxiliary_loss_sums(self, batch: Mapping[str, torch.Tensor],
                            outputs: Mapping[str, torch.Tensor]) -> dict[str, AuxLoss]:
        """The behavioural expectation calibrator ``L_BEC`` (label-free: every row counts), as the
        sum over the batch's rows and the row count (under DDP the mean is over the global batch;
        :meth:`auxiliary_loss` gives the per-batch value).

        Args:
            batch: unused (the calibrator needs no labels).
            outputs: ``{task: [B] or [B, 1]}`` the towers' logits.

        Returns:
            ``{"aitm/calibration": AuxLoss(sums [1], counts [1])}``: ``alpha`` times the summed
            violations, and ``B``; the loss to be *added* to the combined task loss is their ratio.

        Raises:
            ValueError: a tower with more than one output.
        """
        probs = []
        for t in self.funnel:
            o = outputs[t]
            if o.dim() > 1 and o.shape[-1] != 1:
                raise ValueError(f"AITM needs binary tasks (one logit per row); task '{t}' has "
                                 f"outputs of shape {tuple(o.shape)}")
            probs.append(torch.sigmoid(o.reshape(-1)))             # (B,)
        p = torch.stack(probs, dim=1)                              # (B, T)
        violation = torch.relu(p[:, 1:] - p[:, :-1])               # (B, T-1)
        rows = torch.full((1,), p.shape[0], dtype=torch.long, device=p.device)
        return {"aitm/calibration": AuxLoss((self.calibration_weight * violation.sum()).reshape(1), rows)}
