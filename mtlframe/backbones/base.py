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

    def couple(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Couple the towers' outputs (``{task: [B] or [B, C]}``) after they run.

        Identity by default; entire-space models (ESMM: ``pCTCVR = pCTR * pCVR``) override it.
        """
        return outputs

    def auxiliary_loss(self, batch: Mapping[str, torch.Tensor],
                       outputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Extra scalar loss terms of the method (``{name: scalar}``), added to the combined loss
        outside task balancing and logged as ``train/aux/<name>``. Empty by default."""
        return {}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError
