"""``rlw``: random loss weighting.

Lin, Ye, Zhang, Zhang, Kwok. "Reasonable Effectiveness of Random Weighting: A Litmus Test for
Multi-Task Learning." TMLR 2022.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch

from mtlframe.combiners._grad import present_tasks
from mtlframe.combiners.base import LossCombiner


class RandomLossWeighting(LossCombiner):
    """Fresh random task weights every training step.

    .. math:: \\lambda = \\mathrm{softmax}(\\epsilon), \\quad \\epsilon \\sim \\mathcal N(0, I_K),
              \\qquad L = \\sum_k \\lambda_k L_k

    over the ``K`` tasks present in the batch (weights sum to 1, as in the paper; one task gets
    weight 1). The samples come from a generator seeded with ``seed + step`` (``step`` a buffer):
    identical on every DDP process and reproducible after resuming. Outside training
    (``combiner.eval()``) the weights are the expectation ``1/K`` and no sample is drawn.

    Args:
        seed: seed of the weight generator.
        task_names, weights: injected; the recipe's task weights are not used.

    Gradient accumulation: supported (each micro-batch gets its own weights, like a step of
    the method on a smaller batch).
    """

    supports_gradient_accumulation: ClassVar[bool] = True

    def __init__(self, seed: int = 0, *, task_names: list[str],
                 weights: dict[str, float] | None = None) -> None:
        super().__init__(task_names, weights)
        self.seed = int(seed)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._last_weights = {t: 1.0 / len(self.task_names) for t in self.task_names}
        self._host_step: int | None = None   # ``step`` on the host, kept in step with it

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 (torch's hook)
        super()._load_from_state_dict(*args, **kwargs)
        self._host_step = None

    def forward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        tasks = present_tasks(losses, self.task_names)
        if self.training:
            if self._host_step is None:  # the step buffer on the host: read once (after a load)
                self._host_step = int(self.step)
            gen = torch.Generator().manual_seed(self.seed + self._host_step)
            eps = torch.randn(len(self.task_names), generator=gen, dtype=torch.float64)
            self.step += 1
            self._host_step += 1
            idx = [self.task_names.index(t) for t in tasks]
            # a CPU draw: read with .numpy() (never a device sync)
            lam = dict(zip(tasks, torch.softmax(eps[idx], 0).numpy().tolist()))
            self._last_weights = {t: lam.get(t, 0.0) for t in self.task_names}
        else:
            lam = {t: 1.0 / len(tasks) for t in tasks}
        return sum(lam[t] * losses[t] for t in tasks)  # type: ignore[return-value]

    def current_weights(self) -> dict[str, float]:
        return dict(self._last_weights)
