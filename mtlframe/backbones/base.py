"""The backbone contract: shared input ``x: [B, D]`` -> one representation per task."""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import ClassVar, NamedTuple

import torch
from torch import nn


class TaskInputs(NamedTuple):
    """The encoders' output when some encoder has per-task parameters (``task_specific`` tables).

    Attributes:
        shared: ``[B, D]`` the concatenated shared encodings (what every backbone reads as ``x``).
        tasks: ``{task: [B, D]}`` for every task: the same concatenation with each encoder's
            task encoding in place of its shared one where the encoder has one for the task.
    """

    shared: torch.Tensor
    tasks: dict[str, torch.Tensor]


class AuxLoss(NamedTuple):
    """One auxiliary loss of one process's batch, as per-row sums and row counts.

    The loss is a sum of ``K`` masked means (``K = 1`` for most; ESCM2 has one part per funnel
    step, each over its own rows): ``sum_k sums[k] / counts[k]`` (a part with ``counts[k] == 0``
    is 0). Reporting sums and counts instead of the mean lets the training module divide by the
    counts of the *global* batch under DDP (see :meth:`Backbone.auxiliary_loss_sums`).

    Attributes:
        sums: ``[K]`` (or a scalar: ``K = 1``) sums of the row losses over the part's rows,
            weights included, graph attached; 0 where the part has no row.
        counts: ``[K]`` (or a scalar) rows in each part (``>= 0``; integer or float dtype).
    """

    sums: torch.Tensor
    counts: torch.Tensor

    def mean(self) -> torch.Tensor:
        """``sum_k sums[k] / max(counts[k], 1)``, a scalar: the loss over this batch alone."""
        sums, counts = self.sums.reshape(-1), self.counts.reshape(-1)
        return (sums / counts.clamp(min=1).to(sums.dtype)).sum()


class Backbone(nn.Module):
    """Base class of multi-task backbones (shared-bottom, MMoE, PLE, ...).

    Constructor: explicit typed hyper-parameters (the recipe schema) plus the injected keywords
    ``input_dim: int`` (``D``, the concatenated encoder width) and ``task_names: list[str]``.
    Sets :attr:`output_dims` (``task -> H_t``).

    ``forward(x)`` maps ``x: [B, D]`` to ``{task: h_t [B, H_t]}``. A gated backbone stores the
    gate weights of its last forward in :attr:`gate_weights` (``{name: [B, E]}``) for inspection.

    Per-task inputs: a backbone that sets :attr:`accepts_task_inputs` can also read each task's
    own input (see :class:`TaskInputs`; from encoders with per-task tables, e.g. ``embedding``
    with ``task_specific``). It declares the injected keyword ``task_inputs: bool`` (True when the
    recipe's encoders produce them) and is then called ``forward(x, task_inputs)`` with
    ``task_inputs: {task: [B, D]}``. Every other backbone is called ``forward(x)`` with the shared
    ``x`` only, and a recipe that gives it per-task tables is rejected.

    A backbone may also declare the injected keyword ``task_types: dict[str, str]`` (``task ->
    binary | regression | multiclass``) to refuse tasks it cannot model (the funnel backbones,
    :mod:`mtlframe.backbones.funnel`).
    """

    injected: ClassVar[tuple[str, ...]] = ("input_dim", "task_names")
    #: reads per-task inputs ``forward(x, task_inputs)`` when the encoders produce them.
    accepts_task_inputs: ClassVar[bool] = False
    output_dims: dict[str, int]

    def __init__(self) -> None:
        super().__init__()
        self.gate_weights: dict[str, torch.Tensor] = {}

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters used by more than one task (what gradient-level combiners balance).

        The default is every parameter; backbones with task-specific parts override it.
        """
        return self.parameters()

    def gate_labels(self, name: str) -> list[str] | None:
        """Names of the ``E`` columns of ``gate_weights[name]`` (what ``mtlframe explain`` labels
        its heatmap with), or ``None``: ``expert 1 .. E`` (extraction-layer backbones are named
        from their layers). Override when the columns are not experts (AITM: transferred, own)."""
        return None

    def couple(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Couple the towers' outputs (``{task: [B] or [B, C]}``) after they run.

        Identity by default; entire-space models (ESMM: ``pCTCVR = pCTR * pCVR``) override it.
        """
        return outputs

    def auxiliary_loss_sums(self, batch: Mapping[str, torch.Tensor],
                            outputs: Mapping[str, torch.Tensor]) -> dict[str, AuxLoss]:
        """Extra loss terms of the method, as row sums and counts (``{name: AuxLoss}``).

        What the training module calls. Each term is added to the combined loss outside task
        balancing; under DDP each process's term is ``sums[k] / global counts[k] * world size``
        (the counts reduced over processes in the module's one all-reduce per step), so DDP's
        gradient average is the term over the global batch, as for the task losses. Logged per
        epoch as ``train/aux/<name>``: ``sum_k`` (the epoch's summed ``sums[k]`` / summed
        ``counts[k]``, every process), the per-row mean over the epoch.

        Contract: the names, their order and each ``K`` are the same at every step, whatever the
        batch holds (a batch without a usable row gives zero sums and zero counts, never a
        missing name): the processes reduce one fixed-size vector.

        Args:
            batch: the training batch (``label/<task>`` ``[B]``, ``mask/<task>`` ``[B]`` bool, ...).
            outputs: the coupled outputs ``{task: [B] or [B, C]}`` (logits).

        Returns:
            ``{name: AuxLoss(sums [K], counts [K])}``; empty by default. A backbone that overrides
            only :meth:`auxiliary_loss` (the per-batch mean) gets each value as one part with
            count 1: under DDP, the mean of the processes' means.
        """
        if type(self).auxiliary_loss is Backbone.auxiliary_loss:
            return {}
        return {k: AuxLoss(v.reshape(1), torch.ones(1, device=v.device))
                for k, v in self.auxiliary_loss(batch, outputs).items()}

    def auxiliary_loss(self, batch: Mapping[str, torch.Tensor],
                       outputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The auxiliary losses over this batch alone (``{name: scalar}``): :meth:`AuxLoss.mean`
        of each of :meth:`auxiliary_loss_sums`. Empty by default.

        Kept for inspection and for backbones written against it; training calls
        :meth:`auxiliary_loss_sums` (override that one: an override of this one alone is averaged
        per process under DDP)."""
        if type(self).auxiliary_loss_sums is Backbone.auxiliary_loss_sums:
            return {}
        return {k: a.mean() for k, a in self.auxiliary_loss_sums(batch, outputs).items()}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError
