"""``static``: fixed task weights, ``L = sum_i w_i L_i`` (the standard multi-task objective)."""
from __future__ import annotations

from collections.abc import Mapping

import torch

from mtlframe.combiners.base import LossCombiner


class StaticCombiner(LossCombiner):
    """Weighted sum of task losses with the recipe's ``tasks.<name>.weight`` (default 1).

    Args:
        normalize: divide by the sum of the weights of the tasks present in the batch.
        task_names, weights: injected.

    A task absent from a batch contributes nothing (and with ``normalize`` does not dilute
    the others).
    """

    def __init__(self, normalize: bool = False, *, task_names: list[str],
                 weights: dict[str, float] | None = None) -> None:
        super().__init__(task_names, weights)
        self.normalize = normalize

    def forward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        # weights of 1 multiply nothing and the sum starts at the first term: every operation
        # here is one more node for autograd on each step
        terms = [loss if self.static_weights[t] == 1.0 else self.static_weights[t] * loss
                 for t, loss in losses.items()]
        total = sum(terms[1:], terms[0]) if terms else 0
        if self.normalize and losses:
            total = total / sum(self.static_weights[t] for t in losses)
        return total
