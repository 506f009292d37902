"""The tower contract: a task's representation ``[B, H_t]`` -> its output ``[B, out_dim]``."""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn


class Tower(nn.Module):
    """Base class of task towers.

    Constructor: typed hyper-parameters plus the injected ``input_dim: int`` (``H_t``) and
    ``output_dim: int`` (1 for binary and regression tasks, ``C`` for multiclass).
    ``forward(h)`` returns logits (binary, multiclass) or the prediction (regression), ``[B, out_dim]``.
    """

    injected: ClassVar[tuple[str, ...]] = ("input_dim", "output_dim")

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError
